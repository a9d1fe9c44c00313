//! Poll votes: one per sender per poll. The key is the voter, so a re-vote overwrites (when the
//! last vote counts) and reprocessing a message after a crash cannot count a vote twice.
//! Tallies are counted from the votes when asked for.
//!
//! `votes`: `"<vmn>\0<poll keyword's name>\0<sender>"` -> [`Vote`] (JSON)

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::keywords::runtime_keyword_name;
use super::{Result, Store, decode_json, encode_json};

/// One sender's vote in one poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    pub option: String,
    pub message_id: String,
    pub at_ms: u64,
}

/// What recording a vote did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoteOutcome {
    /// First vote of this sender.
    Counted,
    /// A re-vote replaced the earlier one (`vote = "last"`); the earlier option is given.
    Changed { previous: String },
    /// A re-vote ignored (`vote = "first"`); the standing option is given.
    Kept { standing: String },
}

/// The poll's keyword in its name form (upper case, blanks collapsed: see
/// [`runtime_keyword_name`]), not as written: a runtime keyword re-PUT as "Vote" after "VOTE"
/// is the same poll, and its votes must stay with it.
fn poll_prefix(vmn: &str, keyword: &str) -> Vec<u8> {
    let name = runtime_keyword_name(keyword);
    let mut key = Vec::with_capacity(vmn.len() + name.len() + 2);
    key.extend_from_slice(vmn.as_bytes());
    key.push(0);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key
}

impl Store {
    /// Records a vote; `last_counts` says whether a re-vote replaces the earlier one.
    pub fn record_vote(
        &self,
        vmn: &str,
        keyword: &str,
        sender: &str,
        vote: &Vote,
        last_counts: bool,
    ) -> Result<VoteOutcome> {
        let mut key = poll_prefix(vmn, keyword);
        key.extend_from_slice(sender.as_bytes());
        let votes = self.trees().votes;
        let previous: Option<Vote> = match votes.get(&key)? {
            Some(raw) => Some(decode_json(&raw)?),
            None => None,
        };
        match previous {
            // The same message again (reprocessed after a crash): nothing changes.
            Some(p) if p.message_id == vote.message_id => Ok(VoteOutcome::Counted),
            Some(p) if !last_counts => Ok(VoteOutcome::Kept { standing: p.option }),
            Some(p) => {
                votes.insert(key, encode_json(vote))?;
                Ok(VoteOutcome::Changed { previous: p.option })
            }
            None => {
                votes.insert(key, encode_json(vote))?;
                Ok(VoteOutcome::Counted)
            }
        }
    }

    /// Votes per option (every option of `options` present, zero if none) and voters in all.
    pub fn tally(
        &self,
        vmn: &str,
        keyword: &str,
        options: &[String],
    ) -> Result<(BTreeMap<String, u64>, u64)> {
        let mut counts: BTreeMap<String, u64> = options.iter().map(|o| (o.clone(), 0)).collect();
        let mut voters = 0;
        for kv in self.trees().votes.scan_prefix(poll_prefix(vmn, keyword)) {
            let (_, v) = kv?;
            let vote: Vote = decode_json(&v)?;
            *counts.entry(vote.option).or_insert(0) += 1;
            voters += 1;
        }
        Ok((counts, voters))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(option: &str, message_id: &str) -> Vote {
        Vote {
            option: option.into(),
            message_id: message_id.into(),
            at_ms: 1,
        }
    }

    /// A poll's votes belong to its keyword by name: a keyword re-PUT with another spelling
    /// ("Vote" after "VOTE", as the admin API allows) keeps its tally and its voters.
    #[test]
    fn votes_stay_with_the_poll_whatever_its_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8, false).unwrap();
        let options = ["A".to_string(), "B".to_string()];
        let counted = store
            .record_vote("567678", "VOTE", "919800000011", &vote("A", "m1"), false)
            .unwrap();
        assert_eq!(counted, VoteOutcome::Counted);
        let (counts, voters) = store.tally("567678", "Vote", &options).unwrap();
        assert_eq!((counts["A"], voters), (1, 1));
        // `vote = "first"`: the same voter under the new spelling is not counted again.
        let again = store
            .record_vote("567678", "vote", "919800000011", &vote("B", "m2"), false)
            .unwrap();
        assert_eq!(
            again,
            VoteOutcome::Kept {
                standing: "A".into()
            }
        );
        // Another poll (another number, or another keyword) keeps its own votes.
        let (_, elsewhere) = store.tally("567679", "VOTE", &options).unwrap();
        let (_, other) = store.tally("567678", "VOTES", &options).unwrap();
        assert_eq!((elsewhere, other), (0, 0));
    }
}
