#!/usr/bin/env python3
"""Stands in for systemd's notification socket in packaging/test-deb.sh.

Binds a datagram socket at argv[1] and appends one line per field of every
message to argv[2] as "<sender pid> <FIELD=value>", taking the sender's pid
from the kernel (SCM_CREDENTIALS), as systemd does, so the test can check
who sent READY=1, MAINPID= and WATCHDOG=1 rather than trusting the text.
Runs until killed.
"""

import os
import socket
import struct
import sys


def main() -> None:
    path, log_path = sys.argv[1], sys.argv[2]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock.bind(path)
    # The service runs as its own user; systemd's socket is world-writable too.
    os.chmod(path, 0o666)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    creds = struct.calcsize("iII")
    with open(log_path, "a", buffering=1) as log:
        while True:
            data, ancillary, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(creds))
            pid = "?"
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = str(struct.unpack("iII", payload[:creds])[0])
            for field in data.decode(errors="replace").splitlines():
                if field:
                    log.write(f"{pid} {field}\n")


if __name__ == "__main__":
    main()
