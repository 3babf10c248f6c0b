//! Opaque positions for lists and the feed. A client hands back what it
//! was given; it is hex so that it survives any URL or JSON unescaped, and
//! tagged by kind so a list's cursor given to the feed is refused rather
//! than misread.

use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the cursor is not one this server gave out for {0}")]
pub struct BadCursor(pub &'static str);

/// A place in the change feed: the transaction that last changed an
/// analysis, then the analysis's id (`analyses_change_idx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedPosition {
    pub xid: u64,
    pub id: Uuid,
}

impl FeedPosition {
    pub const START: FeedPosition = FeedPosition {
        xid: 0,
        id: Uuid::nil(),
    };

    pub fn encode(&self) -> String {
        hex::encode(format!("f1.{}.{}", self.xid, self.id.simple()))
    }

    pub fn decode(raw: &str) -> Result<Self, BadCursor> {
        let err = || BadCursor("the feed");
        let text = String::from_utf8(hex::decode(raw).map_err(|_| err())?).map_err(|_| err())?;
        let mut parts = text.split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("f1"), Some(xid), Some(id), None) => Ok(FeedPosition {
                xid: xid.parse().map_err(|_| err())?,
                id: Uuid::try_parse(id).map_err(|_| err())?,
            }),
            _ => Err(err()),
        }
    }
}

/// A place in a newest-first list: the last analysis shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListPosition {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl ListPosition {
    pub fn encode(&self) -> String {
        hex::encode(format!(
            "l1.{}.{}",
            self.created_at.timestamp_micros(),
            self.id.simple()
        ))
    }

    pub fn decode(raw: &str) -> Result<Self, BadCursor> {
        let err = || BadCursor("this list");
        let text = String::from_utf8(hex::decode(raw).map_err(|_| err())?).map_err(|_| err())?;
        let mut parts = text.split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("l1"), Some(micros), Some(id), None) => Ok(ListPosition {
                created_at: DateTime::from_timestamp_micros(micros.parse().map_err(|_| err())?)
                    .ok_or_else(err)?,
                id: Uuid::try_parse(id).map_err(|_| err())?,
            }),
            _ => Err(err()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_each_other() {
        let f = FeedPosition {
            xid: 1234,
            id: Uuid::now_v7(),
        };
        assert_eq!(FeedPosition::decode(&f.encode()), Ok(f));
        let l = ListPosition {
            created_at: DateTime::from_timestamp_micros(1_765_000_000_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        assert_eq!(ListPosition::decode(&l.encode()), Ok(l));
        assert!(FeedPosition::decode(&l.encode()).is_err());
        assert!(ListPosition::decode(&f.encode()).is_err());
        for bad in [
            "",
            "zz",
            "66312e31",
            &hex::encode("f1.-1.x"),
            &hex::encode("f1.1.2.3"),
        ] {
            assert!(FeedPosition::decode(bad).is_err(), "{bad}");
        }
    }
}
