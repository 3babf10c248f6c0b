"""Pages through one TAXII 2.1 collection with the OASIS client and prints
one JSON line: objects, seconds, objects per second. With --dump FILE it
also writes a medallion memory-backend data file holding the same
objects and manifest, so the reference server can serve exactly them.

Usage: taxii_pull.py URL_OF_DISCOVERY USER PASSWORD COLLECTION_ALIAS_OR_TITLE PER_REQUEST [--dump FILE]
(TLS: REQUESTS_CA_BUNDLE names the certificate to trust.)
"""
import json
import sys
import time

from taxii2client.v21 import Server, as_pages


def main():
    url, user, password, wanted, per_request = sys.argv[1:6]
    dump = sys.argv[sys.argv.index("--dump") + 1] if "--dump" in sys.argv else None
    server = Server(url, user=user, password=password)
    root = server.api_roots[0]
    collection = next(c for c in root.collections if wanted in (c.id, c.title, getattr(c, "alias", None)))
    started = time.monotonic()
    count = 0
    objects = []
    for envelope in as_pages(collection.get_objects, per_request=int(per_request)):
        got = envelope.get("objects", [])
        count += len(got)
        if dump:
            objects.extend(got)
    seconds = time.monotonic() - started
    print(json.dumps({"url": collection.url, "objects": count, "seconds": round(seconds, 3),
                      "objects_per_s": round(count / seconds, 1)}))
    if dump:
        manifest = []
        for envelope in as_pages(collection.get_manifest, per_request=int(per_request)):
            manifest.extend(envelope.get("objects", []))
        # The memory backend keeps each object's date added on the object.
        # (Each object is in the collection once: its id is enough.)
        added = {m["id"]: m["date_added"] for m in manifest}
        for o in objects:
            o["_date_added"] = added[o["id"]]
            # medallion reads an object's `version` property as the STIX
            # version timestamp (find_att), and malware-analysis's
            # `version` is the product's ("0.1.0"): without this its
            # filters raise. One property fewer for medallion to send.
            if o.get("type") == "malware-analysis":
                o.pop("version", None)
        data = {
            "/discovery": {"title": "medallion", "api_roots": ["http://127.0.0.1/api1/"],
                           "default": "http://127.0.0.1/api1/"},
            "api1": {
                "information": {"title": "api1", "versions": ["application/taxii+json;version=2.1"],
                                "max_content_length": 104857600},
                "status": [],
                "collections": [{
                    "id": collection.id, "title": collection.title, "can_read": True,
                    "can_write": False,
                    "media_types": ["application/stix+json;version=2.1"],
                    "objects": objects, "manifest": manifest,
                }],
            },
        }
        with open(dump, "w") as f:
            json.dump(data, f)


if __name__ == "__main__":
    main()
