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
        self.trees().outbound_ids.insert(
            receipt_key(carrier, carrier_message_id),
            &job_id.to_be_bytes(),
        )?;
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
        let Some(raw) = self
            .trees()
            .outbound_ids
            .get(receipt_key(carrier, carrier_message_id))?
        else {
            return Ok(None);
        };
        let job_id = key_u64(&raw)?;
        self.swap_outbound(job_id, None, |record| {
            for segment in &mut record.segments {
                if segment.carrier_message_id == carrier_message_id {
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

/// What the receipts of these segments say: `undelivered` as soon as one failed, `delivered`
/// when every one was delivered, None while that is not known.
pub fn receipt_state(segments: &[OutboundSegment]) -> Option<&'static str> {
    let stats: Vec<&str> = segments
        .iter()
        .filter_map(|s| s.receipt.as_deref())
        .collect();
    if stats
        .iter()
        .any(|s| *s != "DELIVRD" && *s != "ACCEPTD" && *s != "ENROUTE")
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
