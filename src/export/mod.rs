//! The read side: what intake and analysis found, for analysts and for
//! threat-intelligence platforms. Lookups by hash, lists, the change feed,
//! STIX 2.1 documents and the TAXII 2.1 server, and sample downloads. Every
//! route here reads with the caller's `auth::Visibility`; nothing here
//! writes except the audit row of a download.

pub mod cursor;
pub mod download;
pub mod feed;
pub mod feed_route;
pub mod list;
pub mod lookup;
pub mod params;
pub mod stix;
pub mod stix_route;
pub mod taxii;
pub mod taxii_page;
pub mod view;
pub mod zip;
