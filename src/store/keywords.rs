//! Keywords added at run time through the admin API. They are kept here, as the table the
//! operator sent, and validated against the config when the daemon starts (so a config change
//! that makes one invalid skips it with a warning rather than refusing to start) and merged into
//! the routing snapshot with the config's own keywords.
//!
//! `keywords`: `"<vmn>\0<keyword upper-cased, blanks folded>"` -> the keyword table as JSON (the
//! keys of `[[number.keyword]]`, `keyword` included).

use super::{Result, Store, StoreError};

/// One keyword as kept in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredKeyword {
    /// The number, normalised as the config writes it.
    pub vmn: String,
    /// The keyword's name in the key: see [`runtime_keyword_name`].
    pub name: String,
    /// The keyword table, as the admin API accepted it (a JSON object).
    pub table: serde_json::Value,
}

/// The name a keyword is kept under: upper-cased, blanks trimmed and folded, so that "join
/// club" replaces or deletes "JOIN  CLUB".
pub fn runtime_keyword_name(keyword: &str) -> String {
    keyword
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase()
}

fn keyword_key(vmn: &str, keyword: &str) -> Vec<u8> {
    let name = runtime_keyword_name(keyword);
    let mut key = Vec::with_capacity(vmn.len() + 1 + name.len());
    key.extend_from_slice(vmn.as_bytes());
    key.push(0);
    key.extend_from_slice(name.as_bytes());
    key
}

impl Store {
    /// Keeps (or replaces) the keyword `keyword` of `vmn`; true when it replaced one. Not yet
    /// durable: the caller commits (see [`Store::commit`]) before answering.
    pub fn put_runtime_keyword(
        &self,
        vmn: &str,
        keyword: &str,
        table: &serde_json::Value,
    ) -> Result<bool> {
        let previous = self
            .trees()
            .keywords
            .insert(keyword_key(vmn, keyword), super::encode_json(table))?;
        Ok(previous.is_some())
    }

    /// Forgets the keyword `keyword` of `vmn`; false when there was none. Not yet durable, as
    /// for [`Store::put_runtime_keyword`].
    pub fn delete_runtime_keyword(&self, vmn: &str, keyword: &str) -> Result<bool> {
        let previous = self.trees().keywords.remove(keyword_key(vmn, keyword))?;
        Ok(previous.is_some())
    }

    /// Every keyword kept, by number and name. A record that cannot be read (which only a
    /// damaged store can hold) is logged and left out rather than failing the caller: one bad
    /// record must not keep the daemon from starting.
    pub fn runtime_keywords(&self) -> Result<Vec<StoredKeyword>> {
        read_keywords(self.trees().keywords.iter())
    }

    /// The keywords kept for one number (normalised as the config writes it), by name.
    pub fn runtime_keywords_of(&self, vmn: &str) -> Result<Vec<StoredKeyword>> {
        let mut prefix = vmn.as_bytes().to_vec();
        prefix.push(0);
        read_keywords(self.trees().keywords.scan_prefix(prefix))
    }
}

fn read_keywords(
    records: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
) -> Result<Vec<StoredKeyword>> {
    let mut out = Vec::new();
    for kv in records {
        let (key, raw) = kv?;
        match decode_keyword(&key, &raw) {
            Ok(kept) => out.push(kept),
            Err(e) => tracing::warn!(error = %e, "unreadable keyword record skipped"),
        }
    }
    Ok(out)
}

fn decode_keyword(key: &[u8], raw: &[u8]) -> Result<StoredKeyword> {
    let corrupt = |what: &str| {
        StoreError::Corrupt(format!(
            "keyword record {:?}: {what}",
            String::from_utf8_lossy(key)
        ))
    };
    let text = std::str::from_utf8(key).map_err(|_| corrupt("key is not UTF-8"))?;
    let (vmn, name) = text
        .split_once('\0')
        .ok_or_else(|| corrupt("key has no separator"))?;
    let table = serde_json::from_slice(raw).map_err(|e| corrupt(&e.to_string()))?;
    Ok(StoredKeyword {
        vmn: vmn.to_string(),
        name: name.to_string(),
        table,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_kept_by_number_and_folded_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 8, false).expect("open");
        let table = serde_json::json!({"keyword": "Join  club", "reply": "Hi"});
        assert!(
            !store
                .put_runtime_keyword("567678", "Join  club", &table)
                .expect("put")
        );
        assert!(
            store
                .put_runtime_keyword("567678", " JOIN CLUB ", &table)
                .expect("put")
        );
        store
            .put_runtime_keyword("9876543210", "go", &serde_json::json!({"keyword": "go"}))
            .expect("put");
        let kept = store.runtime_keywords().expect("list");
        assert_eq!(
            kept.iter()
                .map(|k| (k.vmn.as_str(), k.name.as_str()))
                .collect::<Vec<_>>(),
            [("567678", "JOIN CLUB"), ("9876543210", "GO")]
        );
        assert_eq!(kept[0].table, table);
        assert!(
            store
                .delete_runtime_keyword("567678", "join club")
                .expect("delete")
        );
        assert!(
            !store
                .delete_runtime_keyword("567678", "join club")
                .expect("delete")
        );
        assert_eq!(store.runtime_keywords().expect("list").len(), 1);
        assert!(
            store
                .runtime_keywords_of("567678")
                .expect("list")
                .is_empty()
        );
        assert_eq!(
            store.runtime_keywords_of("9876543210").expect("list").len(),
            1
        );
    }

    #[test]
    fn an_unreadable_record_is_left_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 8, false).expect("open");
        store
            .put_runtime_keyword("567678", "A", &serde_json::json!({"keyword": "A"}))
            .expect("put");
        let keywords = store.trees().keywords;
        keywords
            .insert(b"567678\0B", b"{not json".to_vec())
            .expect("insert");
        keywords
            .insert(b"no separator", b"{}".to_vec())
            .expect("insert");
        let kept = store.runtime_keywords().expect("list");
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].name, "A");
    }
}
