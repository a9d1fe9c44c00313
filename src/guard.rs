//! The auto-action guard: caps on the replies and forwards one sender can trigger at one
//! number, and loop detection for senders that are themselves autoresponders.
//!
//! Two bots that answer each other never stop on their own: our "Thanks!" gets their "I am
//! away", which gets our "Thanks!" again. And one person (or a script) texting a keyword fifty
//! times should not get fifty replies and have fifty forwards land on a tenant's phone. So per
//! (number, sender), within the number's `window`:
//! - at most `max_auto_actions` replies and forwards go out; the rest are held;
//! - when the same text (compared without case and extra spaces) has arrived `loop_repeats`
//!   times, the sender is treated as an autoresponder and that message triggers nothing.
//!   Texts are remembered longer when the replies are delayed (`reply_after`, a reply
//!   window): by `loop_repeats` times the delay, so a loop paced by the delay is still seen.
//!
//! Held actions are dropped before the jobs are stored, logged, counted
//! (`vmnd_auto_actions_held_total{reason}`) and listed on the message (`guarded`). The message
//! itself is stored and still goes to its webhook: only automatic SMS (and e-mail) are held.
//! Consent confirmations are never held (one per change already, and the law asks for them).
//! The double opt-in's request is counted like a reply: it goes out at every keyword sent
//! while the contact is pending, not once per change.
//!
//! The history lives in memory, only for messages that would trigger an automatic action: a
//! restart forgets it, which at worst lets one more window's worth of replies out. It is
//! touched only by the processor thread.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use crate::config::GuardConfig;
use crate::store::queue::Job;

/// SMS purposes the guard never holds: the confirmations of consent changes (one per change).
const NEVER_HELD: &[&str] = &["optout_confirmation", "optin_confirmation"];

/// Whether `job` is an automatic action the guard counts: an SMS vmnd sends on its own
/// (reply, expiry reply, poll or help reply, forward to a phone) or an e-mail forward.
/// Webhooks are not.
pub fn is_auto_action(job: &Job) -> bool {
    job.email.is_some()
        || job
            .sms
            .as_ref()
            .is_some_and(|sms| !NEVER_HELD.contains(&sms.purpose.as_str()))
}

/// Why actions were held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `max_auto_actions` reached within the window.
    Rate,
    /// The sender repeats itself: an autoresponder.
    Loop,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rate => "rate",
            Reason::Loop => "loop",
        }
    }
}

/// What one (number, sender) did lately.
#[derive(Debug, Default)]
struct History {
    /// When each allowed auto action went out, oldest first.
    actions: VecDeque<u64>,
    /// (arrival, text hash) of each message, oldest first.
    texts: VecDeque<(u64, u64)>,
    /// The window actions are kept for (the number's, when last used).
    window_ms: u64,
    /// The window texts are kept for: the number's, plus `loop_repeats` times the longest
    /// delay of the automatic actions lately planned for this sender. A reply sent
    /// `reply_after = "10m"` later gets an autoresponder's answer ten minutes after the
    /// sender's message, so its repeats come ten minutes and a bit apart: counted over the
    /// bare window, each would arrive just after the one before was forgotten.
    loop_window_ms: u64,
}

impl History {
    fn forget_before(&mut self, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(self.window_ms);
        while self.actions.front().is_some_and(|t| *t < cutoff) {
            self.actions.pop_front();
        }
        let cutoff = now_ms.saturating_sub(self.loop_window_ms.max(self.window_ms));
        while self.texts.front().is_some_and(|(t, _)| *t < cutoff) {
            self.texts.pop_front();
        }
    }

    fn is_empty(&self) -> bool {
        self.actions.is_empty() && self.texts.is_empty()
    }
}

/// The guard's memory, per (number, sender).
#[derive(Debug, Default)]
pub struct AutoActionGuard {
    senders: HashMap<(String, String), History>,
}

/// The text as loop detection compares it: case and runs of blanks do not matter.
fn text_hash(text: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for word in text.split_whitespace() {
        word.to_lowercase().hash(&mut hasher);
    }
    hasher.finish()
}

impl AutoActionGuard {
    /// Decides for one message from `sender` to `vmn` with `text`, arriving at `now_ms`: removes
    /// the held auto actions from `jobs` and returns, for each, why and what it was.
    pub fn apply(
        &mut self,
        config: &GuardConfig,
        vmn: &str,
        sender: &str,
        text: &str,
        jobs: &mut Vec<Job>,
        now_ms: u64,
    ) -> Vec<(Reason, String)> {
        // Only messages that would trigger something are remembered: a number that only
        // forwards to webhooks keeps no history, and memory follows the senders being
        // answered, not every sender (100,000 senders an hour would otherwise be 100,000
        // entries for nothing).
        if (config.max_auto_actions == 0 && config.loop_repeats == 0)
            || !jobs.iter().any(is_auto_action)
        {
            return Vec::new();
        }
        let window_ms = config.window.as_millis() as u64;
        let delay_ms = jobs
            .iter()
            .filter(|job| is_auto_action(job))
            .map(|job| job.due_ms.saturating_sub(now_ms))
            .max()
            .unwrap_or(0);
        let history = self
            .senders
            .entry((vmn.to_string(), sender.to_string()))
            .or_default();
        history.window_ms = window_ms;
        history.loop_window_ms =
            window_ms.saturating_add(delay_ms.saturating_mul(u64::from(config.loop_repeats)));
        history.forget_before(now_ms);
        let hash = text_hash(text);
        history.texts.push_back((now_ms, hash));
        let repeats = history.texts.iter().filter(|(_, h)| *h == hash).count();
        let looping = config.loop_repeats > 0 && repeats >= config.loop_repeats as usize;

        let mut held = Vec::new();
        jobs.retain(|job| {
            if !is_auto_action(job) {
                return true;
            }
            let reason = if looping {
                Reason::Loop
            } else if config.max_auto_actions > 0
                && history.actions.len() >= config.max_auto_actions as usize
            {
                Reason::Rate
            } else {
                history.actions.push_back(now_ms);
                return true;
            };
            let what = match (&job.sms, &job.email) {
                (Some(sms), _) => format!("{} to {}", sms.purpose, sms.to),
                (None, Some(email)) => format!("email to {}", email.to.join(", ")),
                (None, None) => String::new(),
            };
            held.push((reason, what));
            false
        });
        held
    }

    /// Forgets senders with nothing in their window any more (called from the processor's
    /// periodic sweep), so memory follows the active senders, not every sender ever seen.
    pub fn expire(&mut self, now_ms: u64) {
        self.senders.retain(|_, history| {
            history.forget_before(now_ms);
            !history.is_empty()
        });
    }

    /// Senders currently remembered.
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::queue::SmsJob;
    use std::time::Duration;

    fn sms(purpose: &str, to: &str) -> Job {
        Job {
            id: 1,
            message_id: 1,
            webhook: String::new(),
            event: "message".into(),
            attempts: 0,
            created_ms: 0,
            due_ms: 0,
            first_attempt_ms: None,
            last_error: None,
            last_status: None,
            sms: Some(SmsJob {
                carrier: "sim".into(),
                from: "567678".into(),
                to: to.into(),
                text: "hi".into(),
                purpose: purpose.into(),
                reference: 0,
                sent: vec![],
                to_ton_npi: None,
            }),
            email: None,
        }
    }

    fn webhook() -> Job {
        Job {
            sms: None,
            webhook: "crm".into(),
            ..sms("reply", "x")
        }
    }

    fn email(to: &str) -> Job {
        Job {
            sms: None,
            email: Some(crate::store::queue::EmailJob {
                to: vec![to.into()],
                vmn: "567678".into(),
                msisdn: "a".into(),
                token: None,
            }),
            ..sms("reply", "x")
        }
    }

    #[test]
    fn e_mail_forwards_count_and_are_held_like_sms() {
        let one = GuardConfig {
            max_auto_actions: 1,
            window: Duration::from_secs(600),
            loop_repeats: 0,
        };
        let mut guard = AutoActionGuard::default();
        let mut jobs = vec![email("desk@acme.example"), webhook()];
        assert!(
            guard
                .apply(&one, "567678", "a", "hi", &mut jobs, 0)
                .is_empty()
        );
        let mut jobs = vec![email("desk@acme.example"), webhook()];
        let held = guard.apply(&one, "567678", "a", "hi again", &mut jobs, 1);
        assert_eq!(
            held,
            vec![(Reason::Rate, "email to desk@acme.example".to_string())]
        );
        assert_eq!(jobs.len(), 1, "the webhook stays");
    }

    const CAP5: GuardConfig = GuardConfig {
        max_auto_actions: 5,
        window: Duration::from_secs(600),
        loop_repeats: 0,
    };

    #[test]
    fn the_sixth_auto_action_in_the_window_is_held_and_the_webhook_never_is() {
        let mut guard = AutoActionGuard::default();
        for i in 0..5u64 {
            let mut jobs = vec![sms("reply", "a"), webhook()];
            let held = guard.apply(&CAP5, "567678", "a", &format!("hi {i}"), &mut jobs, i);
            assert!(held.is_empty(), "message {i}");
            assert_eq!(jobs.len(), 2);
        }
        let mut jobs = vec![sms("reply", "a"), webhook()];
        let held = guard.apply(&CAP5, "567678", "a", "hi 5", &mut jobs, 10);
        assert_eq!(held, vec![(Reason::Rate, "reply to a".to_string())]);
        assert_eq!(jobs.len(), 1);
        assert!(jobs[0].sms.is_none(), "the webhook stays");
        // Another sender, and another number, have their own budgets.
        let mut jobs = vec![sms("reply", "b")];
        assert!(
            guard
                .apply(&CAP5, "567678", "b", "hi", &mut jobs, 10)
                .is_empty()
        );
        let mut jobs = vec![sms("reply", "a")];
        assert!(
            guard
                .apply(&CAP5, "999999", "a", "hi", &mut jobs, 10)
                .is_empty()
        );
        // Once the window has passed, replies go out again.
        let mut jobs = vec![sms("reply", "a")];
        assert!(
            guard
                .apply(&CAP5, "567678", "a", "later", &mut jobs, 600_001)
                .is_empty()
        );
    }

    #[test]
    fn forwards_count_and_consent_confirmations_are_never_held() {
        let mut guard = AutoActionGuard::default();
        let config = GuardConfig {
            max_auto_actions: 2,
            ..CAP5
        };
        let mut jobs = vec![
            sms("reply", "a"),
            sms("forward", "919800000000"),
            sms("forward", "919800000001"),
            sms("optout_confirmation", "a"),
        ];
        let held = guard.apply(&config, "567678", "a", "JOIN", &mut jobs, 0);
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].1, "forward to 919800000001");
        assert_eq!(jobs.len(), 3);
        let mut jobs = vec![sms("optin_confirmation", "a")];
        assert!(
            guard
                .apply(&config, "567678", "a", "x", &mut jobs, 1)
                .is_empty()
        );
    }

    /// The double opt-in's request goes out at every keyword sent while pending: a script
    /// sending JOIN over and over gets `max_auto_actions` of them, not one each time.
    #[test]
    fn opt_in_requests_are_counted_like_replies() {
        let mut guard = AutoActionGuard::default();
        let config = GuardConfig {
            max_auto_actions: 2,
            ..CAP5
        };
        let mut sent = 0;
        for t in 0..8 {
            let mut jobs = vec![sms("optin_request", "a")];
            guard.apply(&config, "567678", "a", &format!("JOIN {t}"), &mut jobs, t);
            sent += jobs.len();
        }
        assert_eq!(sent, 2);
    }

    /// An autoresponder answering a reply sent ten minutes after each of its messages
    /// (`reply_after = "10m"`, the default window) repeats itself every ten minutes and a
    /// bit: still a loop.
    #[test]
    fn a_loop_slower_than_the_window_through_a_delayed_reply_is_caught() {
        let mut guard = AutoActionGuard::default();
        let config = GuardConfig {
            max_auto_actions: 0,
            loop_repeats: 3,
            ..CAP5
        };
        let window = CAP5.window.as_millis() as u64;
        let mut held = 0;
        for n in 0..20u64 {
            let now = 1_000_000 + n * (window + 1);
            let mut reply = sms("reply", "bot");
            reply.due_ms = now + window;
            let mut jobs = vec![reply];
            held += guard
                .apply(
                    &config,
                    "567678",
                    "bot",
                    "I am away until Monday",
                    &mut jobs,
                    now,
                )
                .len();
        }
        assert_eq!(held, 18, "the third repeat on are held");
        // Without the delay, the same spacing is no loop: each is forgotten in time.
        let mut guard = AutoActionGuard::default();
        let mut held = 0;
        for n in 0..20u64 {
            let now = 1_000_000 + n * (window + 1);
            let mut jobs = vec![sms("reply", "bot")];
            held += guard
                .apply(
                    &config,
                    "567678",
                    "bot",
                    "I am away until Monday",
                    &mut jobs,
                    now,
                )
                .len();
        }
        assert_eq!(held, 0);
    }

    #[test]
    fn a_sender_repeating_itself_is_an_autoresponder() {
        let mut guard = AutoActionGuard::default();
        let config = GuardConfig {
            max_auto_actions: 0,
            loop_repeats: 3,
            ..CAP5
        };
        for t in 0..2 {
            let mut jobs = vec![sms("reply", "bot")];
            let text = if t == 0 {
                "I am away  until Monday"
            } else {
                "i am AWAY until monday"
            };
            assert!(
                guard
                    .apply(&config, "567678", "bot", text, &mut jobs, t)
                    .is_empty()
            );
        }
        let mut jobs = vec![sms("reply", "bot"), webhook()];
        let held = guard.apply(
            &config,
            "567678",
            "bot",
            "I am away until Monday",
            &mut jobs,
            2,
        );
        assert_eq!(held[0].0, Reason::Loop);
        assert_eq!(jobs.len(), 1, "the webhook stays");
        // A different text from the same sender is answered.
        let mut jobs = vec![sms("reply", "bot")];
        assert!(
            guard
                .apply(&config, "567678", "bot", "JOIN", &mut jobs, 3)
                .is_empty()
        );
    }

    #[test]
    fn messages_that_trigger_nothing_automatic_leave_no_history() {
        let mut guard = AutoActionGuard::default();
        for t in 0..100 {
            let mut jobs = vec![webhook(), sms("optout_confirmation", "a")];
            let sender = format!("91980000{t:04}");
            assert!(
                guard
                    .apply(&CAP5, "567678", &sender, "STOP", &mut jobs, t)
                    .is_empty()
            );
            assert_eq!(jobs.len(), 2);
        }
        assert!(
            guard.is_empty(),
            "nothing remembered for webhook-only traffic"
        );
    }

    #[test]
    fn expire_forgets_quiet_senders_and_zero_turns_it_off() {
        let mut guard = AutoActionGuard::default();
        let mut jobs = vec![sms("reply", "a")];
        guard.apply(&CAP5, "567678", "a", "hi", &mut jobs, 0);
        assert_eq!(guard.len(), 1);
        guard.expire(100);
        assert_eq!(guard.len(), 1);
        guard.expire(600_001);
        assert!(guard.is_empty());
        let off = GuardConfig {
            max_auto_actions: 0,
            loop_repeats: 0,
            ..CAP5
        };
        for t in 0..50 {
            let mut jobs = vec![sms("reply", "a")];
            assert!(
                guard
                    .apply(&off, "567678", "a", "same", &mut jobs, t)
                    .is_empty()
            );
        }
        assert!(guard.is_empty(), "off: nothing remembered");
    }
}
