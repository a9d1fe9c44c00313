//! What vmnd sent by SMS and what became of it: one [`OutboundRecord`] per SMS job (a reply, an
//! expiry reply, a poll answer, a forward), updated as segments are accepted by the carrier and
//! as delivery receipts come back.
//!
//! `outbound`:     job id (u64 BE) -> [`OutboundRecord`] (JSON)
//! `outbound_ids`: `"<carrier>\0<carrier message id>"` -> job id (u64 BE), for receipts

use serde::{Deserialize, Serialize};

use super::{Result, Store, decode_json, encode_json, key_u64, receipt_key};

/// One SMS vmnd sends, as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundRecord {
    /// The job's id (formatted like message ids).
    pub id: String,
    /// The message that caused it.
    pub message_id: String,
    /// `reply`, `expiry_reply`, `poll_reply`, `forward`.
    pub purpose: String,
    pub carrier: String,
    pub from: String,
    pub to: String,
    pub text: String,
    /// `queued`, `sent` (every segment accepted), `delivered`, `undelivered`, `failed`.
    pub state: String,
    pub segments: Vec<OutboundSegment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// One submit_sm of an outbound SMS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundSegment {
    pub seq: u8,
    /// The carrier's id from submit_sm_resp.
    pub carrier_message_id: String,
    /// The receipt's `stat` once one came back (DELIVRD, UNDELIV, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
}

impl Store {
    pub fn outbound(&self, job_id: u64) -> Result<Option<OutboundRecord>> {
        match self.trees().outbound.get(job_id.to_be_bytes())? {
            Some(raw) => Ok(Some(decode_json(&raw)?)),
            None => Ok(None),
        }
    }

    /// Changes the record of `job_id` with `change`, starting from `initial` when there is none
    /// yet; returns it as stored. Read, change and write are one compare-and-swap, retried on
    /// a conflict: the dispatcher (segments accepted, the final state) and the processor
    /// (receipts) change the same record, and a receipt that came back while later segments
    /// were still being sent was overwritten by the dispatcher's older copy.
    pub fn update_outbound(
        &self,
        job_id: u64,
        initial: &OutboundRecord,
        change: impl FnMut(&mut OutboundRecord),
    ) -> Result<OutboundRecord> {
        let updated = self.swap_outbound(job_id, Some(initial), change)?;
        updated.ok_or_else(|| super::StoreError::Corrupt("outbound record vanished".into()))
    }

    /// [`Store::update_outbound`] for a record that must exist already: None when it does not.
    fn swap_outbound(
        &self,
        job_id: u64,
        initial: Option<&OutboundRecord>,
        mut change: impl FnMut(&mut OutboundRecord),
    ) -> Result<Option<OutboundRecord>> {
        let tree = self.trees().outbound;
        let key = job_id.to_be_bytes();
        let mut current = tree.get(key)?;
        loop {
            let mut record = match (&current, initial) {
                (Some(raw), _) => decode_json::<OutboundRecord>(raw)?,
                (None, Some(initial)) => initial.clone(),
                (None, None) => return Ok(None),
            };
            change(&mut record);
            match tree.compare_and_swap(key, current.as_ref(), Some(encode_json(&record)))? {
                Ok(()) => return Ok(Some(record)),
                Err(conflict) => current = conflict.current,
            }
        }
    }

    /// Remembers which job a carrier's message id belongs to.
    pub fn index_carrier_message_id(
        &self,
        carrier: &str,
        carrier_message_id: &str,
        job_id: u64,
    ) -> Result<()> {
        let tree = self.trees().outbound_ids;
        tree.insert(
            receipt_key(carrier, carrier_message_id),
            &job_id.to_be_bytes(),
        )?;
        // Also in the form receipts are looked up in when they write the id otherwise.
        let canonical = canonical_id(carrier_message_id);
        if canonical != carrier_message_id {
            tree.insert(receipt_key(carrier, &canonical), &job_id.to_be_bytes())?;
        }
        Ok(())
    }

    /// Applies a delivery receipt to the SMS it is about; returns the updated record, if the
    /// carrier's message id is one of ours.
    pub fn apply_receipt(
        &self,
        carrier: &str,
        carrier_message_id: &str,
        stat: &str,
        now_ms: u64,
    ) -> Result<Option<OutboundRecord>> {
        // The id as the receipt gives it, then the other forms carriers write the same id in.
        let forms = receipt_id_forms(carrier_message_id);
        let mut found = None;
        for form in &forms {
            if let Some(raw) = self.trees().outbound_ids.get(receipt_key(carrier, form))? {
                found = Some(key_u64(&raw)?);
                break;
            }
        }
        let Some(job_id) = found else {
            return Ok(None);
        };
        let canonical_forms: Vec<String> = forms.iter().map(|f| canonical_id(f)).collect();
        self.swap_outbound(job_id, None, |record| {
            for segment in &mut record.segments {
                if canonical_forms.contains(&canonical_id(&segment.carrier_message_id)) {
                    segment.receipt = Some(stat.to_string());
                }
            }
            match receipt_state(&record.segments) {
                Some(failed @ "undelivered") => record.state = failed.to_string(),
                // Delivered only once every segment was accepted: before, the segments listed
                // are not all of them.
                Some(delivered) if record.state == "sent" || record.state == "delivered" => {
                    record.state = delivered.to_string()
                }
                _ => {}
            }
            record.updated_ms = now_ms;
        })
    }

    /// Outbound SMS, newest first; `message_id` narrows to one inbound message's.
    pub fn list_outbound(
        &self,
        message_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OutboundRecord>> {
        let mut out = Vec::new();
        for kv in self.trees().outbound.iter().rev() {
            let (_, v) = kv?;
            let r: OutboundRecord = decode_json(&v)?;
            if message_id.is_none_or(|m| m == r.message_id) {
                out.push(r);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// A carrier message id with case and leading zeros taken out.
fn canonical_id(id: &str) -> String {
    let trimmed = id.trim_start_matches('0');
    if trimmed.is_empty() && !id.is_empty() {
        "0".to_string()
    } else {
        trimmed.to_ascii_lowercase()
    }
}

/// The keys a receipt's id is looked up under, the id as given first: many SMSCs answer
/// submit_sm with a hex id and write it in decimal in the receipt's text (Kannel's
/// `msg-id-type` exists for this), or change its case or leading zeros. Sent ids are indexed
/// as given and in their [`canonical_id`] form.
fn receipt_id_forms(id: &str) -> Vec<String> {
    let mut forms = vec![id.to_string()];
    let mut add = |form: String| {
        if !form.is_empty() && !forms.contains(&form) {
            forms.push(form);
        }
    };
    add(canonical_id(id));
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = id.parse::<u64>() {
            add(format!("{n:x}"));
        }
    }
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        if let Ok(n) = u64::from_str_radix(id, 16) {
            add(n.to_string());
        }
    }
    forms
}

/// What the receipts of these segments say: `undelivered` as soon as one failed (UNDELIV,
/// EXPIRED, DELETED, REJECTD), `delivered` when every one was delivered, None while that is
/// not known. A state the receipt did not give, or one SMPP does not name, changes nothing.
pub fn receipt_state(segments: &[OutboundSegment]) -> Option<&'static str> {
    let stats: Vec<&str> = segments
        .iter()
        .filter_map(|s| s.receipt.as_deref())
        .collect();
    if stats
        .iter()
        .any(|s| matches!(*s, "UNDELIV" | "EXPIRED" | "DELETED" | "REJECTD"))
    {
        Some("undelivered")
    } else if !segments.is_empty()
        && stats.len() == segments.len()
        && stats.iter().all(|s| *s == "DELIVRD")
    {
        Some("delivered")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(store: &Store, job_id: u64, carrier_id: &str) {
        let record = OutboundRecord {
            id: crate::store::format_id(job_id),
            message_id: crate::store::format_id(job_id >> 8),
            purpose: "reply".into(),
            carrier: "sim".into(),
            from: "567678".into(),
            to: "919800000011".into(),
            text: "hi".into(),
            state: "sent".into(),
            segments: vec![OutboundSegment {
                seq: 0,
                carrier_message_id: carrier_id.into(),
                receipt: None,
            }],
            error: None,
            created_ms: 1,
            updated_ms: 1,
        };
        store.update_outbound(job_id, &record, |_| {}).unwrap();
        store
            .index_carrier_message_id("sim", carrier_id, job_id)
            .unwrap();
    }

    /// A receipt finds its SMS whatever form the carrier writes the id in: as submit_sm_resp
    /// gave it, in other case, without leading zeros, or in decimal for a hex id.
    #[test]
    fn receipts_find_their_sms_in_any_form_of_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8, false).unwrap();
        for (n, written) in ["0A1B2C", "0a1b2c", "A1B2C", "662316"].iter().enumerate() {
            let job = (n as u64 + 1) << 8;
            sent(&store, job, "0A1B2C");
            let found = store
                .apply_receipt("sim", written, "DELIVRD", 5)
                .unwrap()
                .unwrap_or_else(|| panic!("{written} not correlated"));
            assert_eq!(found.id, crate::store::format_id(job), "{written}");
            assert_eq!(found.state, "delivered");
            assert_eq!(found.segments[0].receipt.as_deref(), Some("DELIVRD"));
        }
        // A decimal id in submit_sm_resp, the same id in hex in the receipt.
        sent(&store, 9 << 8, "662316");
        assert!(
            store
                .apply_receipt("sim", "a1b2c", "DELIVRD", 5)
                .unwrap()
                .is_some()
        );
        assert!(
            store
                .apply_receipt("sim", "nope", "DELIVRD", 5)
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .apply_receipt("other", "662316", "DELIVRD", 5)
                .unwrap()
                .is_none()
        );
    }

    /// Only a failed state makes an SMS undelivered; a receipt without a state, or with one
    /// SMPP does not name, changes nothing.
    #[test]
    fn a_receipt_without_a_known_state_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8, false).unwrap();
        sent(&store, 1 << 8, "m1");
        for stat in ["", "DELIVERED", "UNKNOWN", "ACCEPTD", "ENROUTE"] {
            let record = store.apply_receipt("sim", "m1", stat, 5).unwrap().unwrap();
            assert_eq!(record.state, "sent", "{stat:?}");
        }
        for failed in ["UNDELIV", "EXPIRED", "DELETED", "REJECTD"] {
            sent(&store, 2 << 8, "m2");
            let record = store
                .apply_receipt("sim", "m2", failed, 5)
                .unwrap()
                .unwrap();
            assert_eq!(record.state, "undelivered", "{failed}");
        }
    }
}
