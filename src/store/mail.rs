//! E-mail replies: the reply tokens of forwards sent, and a record of every e-mail that came
//! back over LMTP, accepted or not (operators see them at `GET /api/mail/replies`).
//!
//! `mail_tokens`:  token (ASCII) -> [`ReplyToken`] (JSON)
//! `mail_replies`: id (u64 BE, from sled's id generator, so newest last) -> [`MailReply`] (JSON)

use serde::{Deserialize, Serialize};
use sled::Transactional;

use super::queue::Job;
use super::{Result, Store, StoreError, decode_json, encode_json};

/// What a reply token stands for: who a reply by e-mail goes to, from which number, and who may
/// send one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyToken {
    /// The number the original SMS was sent to: the reply leaves from it.
    pub vmn: String,
    /// The person who sent the original SMS: the reply goes to them.
    pub msisdn: String,
    /// The original message (formatted id).
    pub message_id: String,
    /// The forward's job (formatted id).
    pub job_id: String,
    /// The addresses the forward went to (the rule's `email`): only they may answer.
    pub allowed: Vec<String>,
    pub created_ms: u64,
    pub expires_ms: u64,
}

/// One e-mail handed to the LMTP listener for one recipient, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailReply {
    /// Formatted like message ids; assigned by [`Store::record_mail_reply`].
    pub id: String,
    pub received_at: String,
    pub received_at_ms: u64,
    /// The envelope sender (`MAIL FROM`), empty for a bounce.
    pub envelope_from: String,
    /// The address of the `From:` header, when the message got that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The recipient (`RCPT TO`).
    pub rcpt: String,
    /// The token read from the recipient, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// `accepted` (texted), `rejected` (refused to the MTA) or `ignored` (an automatic reply:
    /// taken, not texted).
    pub outcome: String,
    /// The LMTP reply code given (250, 550, 552...).
    pub code: u16,
    /// Why, in words (the text of the LMTP reply).
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msisdn: Option<String>,
    /// The SMS job queued for an accepted reply (formatted id; see `/api/outbound`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The reply's text after quoted history and signature were stripped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl Store {
    /// Records `token` unless it is there already; returns what is stored under it.
    pub fn put_reply_token(&self, token: &str, record: &ReplyToken) -> Result<ReplyToken> {
        let tree = self.trees().mail_tokens;
        let swapped = tree.compare_and_swap(
            token.as_bytes(),
            None as Option<&[u8]>,
            Some(encode_json(record)),
        )?;
        match swapped {
            Ok(()) => Ok(record.clone()),
            Err(e) => match e.current {
                Some(raw) => decode_json(&raw),
                None => Err(StoreError::Corrupt("reply token vanished".into())),
            },
        }
    }

    pub fn reply_token(&self, token: &str) -> Result<Option<ReplyToken>> {
        match self.trees().mail_tokens.get(token.as_bytes())? {
            Some(raw) => Ok(Some(decode_json(&raw)?)),
            None => Ok(None),
        }
    }

    /// Removes tokens expired before `now_ms`; returns how many.
    pub fn prune_reply_tokens(&self, now_ms: u64) -> Result<usize> {
        let tree = self.trees().mail_tokens;
        let mut removed = 0;
        for kv in tree.iter() {
            let (key, raw) = kv?;
            // A record that does not decode is kept for an operator to look at.
            if let Ok(token) = decode_json::<ReplyToken>(&raw) {
                if token.expires_ms < now_ms {
                    tree.remove(key)?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Records an e-mail that came back, assigning its id; with `job`, queues that job in the
    /// same transaction (an accepted reply is never recorded without its SMS, nor the reverse).
    /// Not durable until the next [`Store::commit`].
    pub fn record_mail_reply(&self, reply: &mut MailReply, job: Option<&Job>) -> Result<u64> {
        let id = self.next_id()?;
        reply.id = super::format_id(id);
        let t = self.trees();
        let key = id.to_be_bytes();
        let value = encode_json(reply);
        let job = job.map(|j| (j.id.to_be_bytes(), encode_json(j)));
        (t.mail_replies, t.jobs).transaction(|(replies, jobs)| {
            replies.insert(&key, value.as_slice())?;
            if let Some((k, v)) = &job {
                jobs.insert(k, v.as_slice())?;
            }
            Ok::<(), sled::transaction::ConflictableTransactionError<StoreError>>(())
        })?;
        Ok(id)
    }

    /// Recorded e-mail replies, newest first, starting strictly before `before`, only those
    /// with `outcome` when given.
    pub fn mail_replies(
        &self,
        before: Option<u64>,
        outcome: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MailReply>> {
        let upper = before.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for kv in self.trees().mail_replies.range(..upper.to_be_bytes()).rev() {
            if out.len() >= limit {
                break;
            }
            let (_, raw) = kv?;
            let reply: MailReply = decode_json(&raw)?;
            if outcome.is_none_or(|o| o == reply.outcome) {
                out.push(reply);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A reply token for tests, expiring at `expires_ms`.
    pub(crate) fn token(expires_ms: u64) -> ReplyToken {
        ReplyToken {
            vmn: "567678".into(),
            msisdn: "919812345678".into(),
            message_id: "0000000000000100".into(),
            job_id: "0000000000010001".into(),
            allowed: vec!["desk@acme.example".into()],
            created_ms: 1,
            expires_ms,
        }
    }

    #[test]
    fn a_token_is_written_once_and_pruned_after_expiry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 8, false).expect("store");
        let first = token(1_000);
        assert_eq!(store.put_reply_token("abc", &first).expect("put"), first);
        // A second write (a retry after a crash) keeps the first record.
        let stored = store.put_reply_token("abc", &token(9_999)).expect("put");
        assert_eq!(stored, first);
        store.put_reply_token("def", &token(5_000)).expect("put");
        assert_eq!(store.prune_reply_tokens(2_000).expect("prune"), 1);
        assert_eq!(store.reply_token("abc").expect("get"), None);
        assert!(store.reply_token("def").expect("get").is_some());
    }

    #[test]
    fn replies_are_listed_newest_first_and_paged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 8, false).expect("store");
        let mut ids = Vec::new();
        for n in 0..3 {
            let mut reply = MailReply {
                id: String::new(),
                received_at: String::new(),
                received_at_ms: n,
                envelope_from: "a@b.example".into(),
                from: None,
                rcpt: format!("reply+{n}@r.example"),
                token: None,
                outcome: "rejected".into(),
                code: 550,
                reason: "unknown".into(),
                vmn: None,
                msisdn: None,
                job_id: None,
                text: None,
            };
            ids.push(store.record_mail_reply(&mut reply, None).expect("record"));
        }
        let all = store.mail_replies(None, None, 10).expect("list");
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].received_at_ms, 2);
        assert!(
            store
                .mail_replies(None, Some("accepted"), 10)
                .expect("list")
                .is_empty()
        );
        let page = store.mail_replies(Some(ids[2]), None, 1).expect("list");
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].received_at_ms, 1);
    }
}
