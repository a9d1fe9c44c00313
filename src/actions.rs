//! Turns a routing decision into the jobs that carry it out: webhook events, replies (templated,
//! delayed by `reply_after`, held for `reply_window`), forwards to phones and e-mail addresses,
//! expiry replies and poll answers. Poll votes are recorded here too. Job ids derive from the message id and the
//! action's position, so reprocessing a message after a crash rewrites the same jobs.

use chrono::{DateTime, Utc};

use crate::clock;
use crate::config::Subscribe;
use crate::config::{self, Actions, Number};
use crate::routing::keywords::first_word_key;
use crate::routing::router::{Decision, ReservedKind, Router, next_opening};
use crate::store::consent::{ConsentChange, ConsentState};
use crate::store::polls::{Vote, VoteOutcome};
use crate::store::queue::{EmailJob, Job, SmsJob};
use crate::store::{self, MessageRecord, Store};

/// Jobs of one message, numbered in order.
///
/// A job's id is `message id << 8 | index`, so that processing the message again after a
/// crash rewrites the same jobs. That holds only if the plan comes out the same. One job
/// depends on the contact's state *now*: the double opt-in's request, sent while the contact
/// is not opted in, which it may be by the time the message is processed again. It takes the
/// reserved index [`OPTIN_REQUEST_INDEX`], so the jobs after it keep theirs either way.
struct Jobs {
    message_id: u64,
    now_ms: u64,
    jobs: Vec<Job>,
    /// The next sequential index (0..OPTIN_REQUEST_INDEX).
    next_index: u16,
}

/// The index of the double opt-in's request (see [`Jobs`]).
const OPTIN_REQUEST_INDEX: u8 = 255;

impl Jobs {
    fn new(message_id: u64, now_ms: u64) -> Jobs {
        Jobs {
            message_id,
            now_ms,
            // Most messages make one job: room for it, not the four a first push reserves.
            jobs: Vec::with_capacity(1),
            next_index: 0,
        }
    }

    /// Queues one job under the next index; returns it, or None when the message has its
    /// 255 already.
    fn push(
        &mut self,
        webhook: String,
        event: &str,
        due_ms: u64,
        sms: Option<SmsJob>,
    ) -> Option<&mut Job> {
        // Ids are `message id << 8 | index`: one index too many would reuse another job's id
        // and overwrite it. The config keeps rules far below (`config::MAX_FORWARD_TO`).
        let index = match u8::try_from(self.next_index) {
            Ok(index) if index < OPTIN_REQUEST_INDEX => index,
            _ => {
                tracing::error!(
                    message_id = self.message_id,
                    event,
                    "more than 255 jobs for one message; this one is not queued"
                );
                metrics::counter!("vmnd_jobs_not_queued_total").increment(1);
                return None;
            }
        };
        self.next_index += 1;
        self.push_at(index, webhook, event, due_ms, sms)
    }

    fn push_at(
        &mut self,
        index: u8,
        webhook: String,
        event: &str,
        due_ms: u64,
        sms: Option<SmsJob>,
    ) -> Option<&mut Job> {
        self.jobs.push(Job {
            id: Job::id_for(self.message_id, index),
            message_id: self.message_id,
            webhook,
            event: event.to_string(),
            attempts: 0,
            created_ms: self.now_ms,
            due_ms,
            first_attempt_ms: None,
            last_error: None,
            last_status: None,
            sms,
            email: None,
        });
        self.jobs.last_mut()
    }

    /// An e-mail forward of the message to `to` (see `outbound::email`).
    fn push_email(&mut self, record: &MessageRecord, to: &[String], event: &str) {
        let now_ms = self.now_ms;
        if let Some(job) = self.push(String::new(), event, now_ms, None) {
            job.email = Some(EmailJob {
                to: to.to_vec(),
                vmn: record.to.clone(),
                msisdn: record.from.clone(),
                token: None,
            });
        }
    }
}

/// Values for `{from} {to} {keyword} {args} {text} {inbox} {date}` (and `{options}`).
struct Vars<'a> {
    record: &'a mut MessageRecord,
    options: String,
    /// The poll option voted for, if any.
    vote: Option<String>,
}

impl Vars<'_> {
    fn get(&self, name: &str) -> Option<String> {
        let r = &*self.record;
        Some(match name {
            "from" => r.from.clone(),
            "to" => r.to.clone(),
            "keyword" => r.keyword.clone().unwrap_or_default(),
            "args" => r.args.clone().unwrap_or_default(),
            "text" => r.text.clone(),
            "inbox" => r.inbox.clone().unwrap_or_default(),
            "date" => r.received_at.get(..10).unwrap_or_default().to_string(),
            "options" => self.options.clone(),
            "option" => self.vote.clone().unwrap_or_default(),
            _ => return None,
        })
    }

    fn render(&self, template: &str) -> String {
        config::render_template(template, &|name| self.get(name))
    }
}

/// Plans the jobs for a stored message (and records a poll vote). Fills in `to` (the number as
/// configured), `routed`, `keyword`, `inbox`, `args` and `webhooks` on the record.
///
/// With `store` None nothing is written (poll votes are not recorded): `vmnd route` and
/// `POST /api/route` use that to explain what would happen.
pub fn plan(
    store: Option<&Store>,
    router: &Router,
    record: &mut MessageRecord,
    matchable: bool,
) -> store::Result<Vec<Job>> {
    let Some(number) = router.number(&record.to).cloned() else {
        metrics::counter!("vmnd_messages_unrouted_total").increment(1);
        return Ok(Vec::new());
    };
    record.to = number.vmn.clone();
    record.routed = true;
    let now_ms = clock::now_ms();
    let mut jobs = Jobs::new(store::parse_id(&record.id).unwrap_or(0), now_ms);
    if record.event == "receipt" {
        if let Some(w) = &number.receipts_webhook {
            record.webhooks.push(w.clone());
            jobs.push(w.clone(), "receipt", now_ms, None);
        }
        return Ok(jobs.jobs);
    }
    let at = DateTime::<Utc>::from_timestamp_millis(record.received_at_ms as i64)
        .unwrap_or_else(Utc::now);
    let mut decision = if matchable {
        let routed = router.route(&number, &record.text, at);
        record.args = routed.args;
        routed.decision
    } else {
        // Binary payloads are never keyword-matched.
        Decision::Default
    };
    // An opt-out written in words, where the number asks for it and nothing else matched.
    if matchable && number.consent.intent_phrases && matches!(decision, Decision::Default) {
        if let Some(phrase) = crate::consent::intent::detect_optout(&record.text) {
            decision = Decision::Reserved {
                kind: ReservedKind::Stop,
                phrase,
            };
        }
    }
    let consenting = is_msisdn(&record.from);
    if let (Some(store), true) = (store, consenting) {
        store.touch_contact(&number.vmn, &record.from, record.received_at_ms)?;
    }
    let mut vars = Vars {
        record,
        options: String::new(),
        vote: None,
    };
    match decision {
        Decision::Reserved { kind, phrase } => {
            // Opt-out, opt-in and help words: the consent ledger changes, one confirmation
            // per change, an event to the consent webhook; the message itself still goes to
            // the default webhook, and never gets a campaign's or the default's reply.
            vars.record.keyword = Some(phrase.to_uppercase());
            if let Some(w) = &number.default_actions.webhook {
                jobs.push(w.clone(), "message", now_ms, None);
            }
            if consenting {
                reserved_word(store, &mut jobs, &number, &mut vars, kind, &phrase)?;
            }
        }
        Decision::Keyword { rule, .. } => {
            let rule = &number.keywords[rule];
            vars.record.keyword = Some(rule.keyword.clone());
            if consenting {
                subscribe(store, &mut jobs, &number, &mut vars, rule)?;
            }
            vars.record.inbox = Some(rule.inbox.clone());
            metrics::counter!("vmnd_keyword_matches_total", "vmn" => number.vmn.clone(), "keyword" => rule.keyword.clone()).increment(1);
            let mut actions = rule.actions.clone();
            if let Some(poll) = &rule.poll {
                vars.options = poll.options.join(", ");
                // The first word after the keyword, compared as keywords are (case,
                // full-width and compatibility forms, edge punctuation).
                let answer = vars.record.args.as_deref().and_then(first_word_key);
                match poll
                    .options
                    .iter()
                    .find(|o| answer.is_some() && first_word_key(o) == answer)
                {
                    Some(option) => {
                        let vote = Vote {
                            option: option.clone(),
                            message_id: vars.record.id.clone(),
                            at_ms: vars.record.received_at_ms,
                        };
                        vars.vote = Some(option.clone());
                        if let Some(store) = store {
                            let outcome = store.record_vote(
                                &number.vmn,
                                &rule.keyword,
                                &vars.record.from,
                                &vote,
                                poll.last_vote_counts,
                            )?;
                            let label = match outcome {
                                VoteOutcome::Counted => "counted",
                                VoteOutcome::Changed { .. } => "changed",
                                VoteOutcome::Kept { .. } => "kept",
                            };
                            metrics::counter!("vmnd_poll_votes_total", "outcome" => label)
                                .increment(1);
                        }
                    }
                    None => {
                        metrics::counter!("vmnd_poll_votes_total", "outcome" => "invalid")
                            .increment(1);
                        // An invalid answer gets the invalid reply instead of the vote's.
                        actions.reply = poll.invalid_reply.clone();
                        actions.reply_after = None;
                        actions.reply_window = None;
                    }
                }
            }
            run_actions(&mut jobs, &number, &actions, &vars, "message", "reply");
        }
        Decision::Expired { rule, .. } => {
            let rule = &number.keywords[rule];
            vars.record.keyword = Some(rule.keyword.clone());
            vars.record.inbox = Some(rule.inbox.clone());
            metrics::counter!("vmnd_keyword_expired_total", "vmn" => number.vmn.clone(), "keyword" => rule.keyword.clone()).increment(1);
            let actions = Actions {
                webhook: rule.actions.webhook.clone(),
                reply: rule.expiry_reply.clone(),
                ..Default::default()
            };
            run_actions(
                &mut jobs,
                &number,
                &actions,
                &vars,
                "expired",
                "expiry_reply",
            );
        }
        Decision::Default => {
            run_actions(
                &mut jobs,
                &number,
                &number.default_actions,
                &vars,
                "message",
                "reply",
            );
        }
    }
    // Where the record went, for operators: the webhooks its jobs post to.
    for job in &jobs.jobs {
        if job.sms.is_none() && job.email.is_none() && !vars.record.webhooks.contains(&job.webhook)
        {
            vars.record.webhooks.push(job.webhook.clone());
        }
    }
    Ok(jobs.jobs)
}

/// A sender we can hold consent for and answer: an MSISDN (digits), not an alphanumeric name.
fn is_msisdn(from: &str) -> bool {
    !from.is_empty() && from.bytes().all(|b| b.is_ascii_digit())
}

/// SMS purposes sent whatever the recipient's consent: the single confirmation of an opt-out
/// (DESIGN.md promise 3). Everything else to an opted-out person is suppressed at send time.
pub const CONSENT_EXEMPT_PURPOSES: &[&str] = &["optout_confirmation"];

/// Records a consent change (not in a dry run) and returns whether the state changed.
fn change_consent(
    store: Option<&Store>,
    number: &Number,
    vars: &Vars<'_>,
    to: ConsentState,
    matched: &str,
    keyword: Option<&str>,
    pending_until_ms: Option<u64>,
) -> store::Result<(ConsentState, bool)> {
    let Some(store) = store else {
        // Explaining: say what would happen without writing.
        return Ok((ConsentState::Unknown, true));
    };
    let attributes: Vec<(String, String)> = match (&vars.record.args, keyword) {
        (Some(args), Some(_)) => vec![("args".to_string(), args.clone())],
        _ => Vec::new(),
    };
    store.apply_consent(&ConsentChange {
        vmn: &number.vmn,
        msisdn: &vars.record.from,
        to,
        at_ms: vars.record.received_at_ms,
        text: &vars.record.text,
        matched,
        message_id: Some(&vars.record.id),
        source: "sms",
        keyword,
        attributes: &attributes,
        pending_until_ms,
    })
}

fn consent_event(jobs: &mut Jobs, number: &Number, event: &str) {
    if let Some(w) = &number.consent.webhook {
        jobs.push(w.clone(), event, jobs.now_ms, None);
    }
}

/// STOP / START / HELP (and an opt-out written in words).
fn reserved_word(
    store: Option<&Store>,
    jobs: &mut Jobs,
    number: &Number,
    vars: &mut Vars<'_>,
    kind: ReservedKind,
    phrase: &str,
) -> store::Result<()> {
    let now_ms = jobs.now_ms;
    match kind {
        ReservedKind::Stop | ReservedKind::Start => {
            let (to, event, reply, purpose) = if kind == ReservedKind::Stop {
                let reply = &number.consent.stop_reply;
                (
                    ConsentState::OptedOut,
                    "optout",
                    reply,
                    "optout_confirmation",
                )
            } else {
                let reply = &number.consent.start_reply;
                (ConsentState::OptedIn, "optin", reply, "optin_confirmation")
            };
            let (previous, changed) = change_consent(store, number, vars, to, phrase, None, None)?;
            metrics::counter!("vmnd_consent_words_total", "event" => event, "changed" => if changed { "yes" } else { "no" }).increment(1);
            if changed {
                vars.record.consent = Some(consent_info(previous, to, phrase));
                consent_event(jobs, number, event);
                // One confirmation per change: a repeated STOP changes nothing and gets none.
                if let Some(reply) = reply {
                    push_sms(jobs, number, vars, reply, purpose, now_ms);
                    if let (Some(store), Some(_)) = (store, &number.carrier) {
                        store.set_confirmation_sent(
                            &number.vmn,
                            &vars.record.from,
                            &vars.record.id,
                        )?;
                    }
                }
            }
        }
        ReservedKind::Help => {
            if let Some(reply) = &number.consent.help_reply {
                push_sms(jobs, number, vars, reply, "help", now_ms);
            }
        }
    }
    Ok(())
}

/// A keyword with `subscribe`: opts the sender in, or asks them to confirm (double opt-in).
fn subscribe(
    store: Option<&Store>,
    jobs: &mut Jobs,
    number: &Number,
    vars: &mut Vars<'_>,
    rule: &crate::config::KeywordRule,
) -> store::Result<()> {
    match &rule.subscribe {
        Subscribe::No => {}
        Subscribe::Single => {
            let (previous, changed) = change_consent(
                store,
                number,
                vars,
                ConsentState::OptedIn,
                &rule.keyword,
                Some(&rule.keyword),
                None,
            )?;
            if changed {
                vars.record.consent =
                    Some(consent_info(previous, ConsentState::OptedIn, &rule.keyword));
                consent_event(jobs, number, "optin");
            }
        }
        Subscribe::Double {
            confirm_reply,
            within,
        } => {
            let current = match store {
                Some(s) => s.consent_state(&number.vmn, &vars.record.from)?,
                None => ConsentState::Unknown,
            };
            if current != ConsentState::OptedIn {
                let until = vars
                    .record
                    .received_at_ms
                    .saturating_add(within.as_millis() as u64);
                change_consent(
                    store,
                    number,
                    vars,
                    ConsentState::Pending,
                    &rule.keyword,
                    Some(&rule.keyword),
                    Some(until),
                )?;
                // At its reserved index: see `Jobs`.
                if let Some(sms) = sms_to_sender(jobs, number, vars, confirm_reply, "optin_request")
                {
                    let now_ms = jobs.now_ms;
                    jobs.push_at(
                        OPTIN_REQUEST_INDEX,
                        String::new(),
                        "message",
                        now_ms,
                        Some(sms),
                    );
                }
            }
        }
    }
    Ok(())
}

fn consent_info(previous: ConsentState, state: ConsentState, matched: &str) -> store::ConsentInfo {
    store::ConsentInfo {
        previous,
        state,
        matched: matched.to_string(),
    }
}

/// Queues an SMS to the sender of the message, from the number.
fn push_sms(
    jobs: &mut Jobs,
    number: &Number,
    vars: &Vars<'_>,
    template: &str,
    purpose: &str,
    due_ms: u64,
) {
    if let Some(sms) = sms_to_sender(jobs, number, vars, template, purpose) {
        jobs.push(String::new(), "message", due_ms, Some(sms));
    }
}

/// An SMS to the sender of the message, from the number; None without a carrier (which
/// validation refuses for SMS actions).
fn sms_to_sender(
    jobs: &Jobs,
    number: &Number,
    vars: &Vars<'_>,
    template: &str,
    purpose: &str,
) -> Option<SmsJob> {
    let carrier = number.carrier.as_ref()?;
    Some(sms_job(
        jobs,
        carrier,
        &number.vmn,
        &vars.record.from,
        vars.record.from_ton_npi,
        vars.render(template),
        purpose,
    ))
}

fn run_actions(
    jobs: &mut Jobs,
    number: &Number,
    actions: &Actions,
    vars: &Vars<'_>,
    event: &str,
    reply_purpose: &str,
) {
    let now_ms = jobs.now_ms;
    if let Some(w) = &actions.webhook {
        jobs.push(w.clone(), event, now_ms, None);
    }
    if !actions.email.is_empty() {
        jobs.push_email(&*vars.record, &actions.email, event);
    }
    let Some(carrier) = &number.carrier else {
        // Validation refuses SMS actions without a carrier; nothing to send.
        return;
    };
    let sender = &vars.record.from;
    if let Some(template) = &actions.reply {
        if sender.bytes().all(|b| b.is_ascii_digit()) && !sender.is_empty() {
            let mut due =
                now_ms.saturating_add(actions.reply_after.map_or(0, |d| d.as_millis() as u64));
            if let Some(window) = &actions.reply_window {
                let at =
                    DateTime::<Utc>::from_timestamp_millis(due as i64).unwrap_or_else(Utc::now);
                due = next_opening(window, at).timestamp_millis().max(0) as u64;
            }
            let sms = sms_job(
                jobs,
                carrier,
                &number.vmn,
                sender,
                vars.record.from_ton_npi,
                vars.render(template),
                reply_purpose,
            );
            jobs.push(String::new(), event, due, Some(sms));
        } else {
            // An alphanumeric sender cannot be answered by SMS.
            metrics::counter!("vmnd_replies_impossible_total").increment(1);
        }
    }
    for phone in &actions.forward_to {
        let text = vars.render(&actions.forward_template);
        let sms = sms_job(jobs, carrier, &number.vmn, phone, None, text, "forward");
        jobs.push(String::new(), event, now_ms, Some(sms));
    }
}

/// `to_ton_npi`: the sender's address type for a reply to them, None for a configured number
/// (`forward_to` lists international numbers).
fn sms_job(
    jobs: &Jobs,
    carrier: &str,
    from: &str,
    to: &str,
    to_ton_npi: Option<[u8; 2]>,
    text: String,
    purpose: &str,
) -> SmsJob {
    SmsJob {
        carrier: carrier.to_string(),
        from: from.to_string(),
        to: to.to_string(),
        to_ton_npi,
        text,
        purpose: purpose.to_string(),
        // Differs between the SMS of one message and between messages.
        reference: (jobs.message_id as u8)
            .wrapping_mul(31)
            .wrapping_add(jobs.jobs.len() as u8),
        sent: Vec::new(),
    }
}

/// What `vmnd route` and `POST /api/route` answer: the decision, the actions that would run,
/// and why the other candidates did not match. Nothing is written anywhere.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Explanation {
    pub to: String,
    pub from: String,
    pub text: String,
    pub at: String,
    /// The number as configured, or None when vmnd does not serve the destination.
    pub number: Option<String>,
    /// `keyword`, `expired`, `reserved`, `default` or `unrouted`.
    pub decision: String,
    pub keyword: Option<String>,
    pub inbox: Option<String>,
    pub tenant: Option<String>,
    pub args: Option<String>,
    /// One line per job that would be queued.
    pub actions: Vec<String>,
    pub candidates: Vec<crate::routing::router::Candidate>,
}

/// Explains the fate of a message from `from` to `to` with `text` at `at`.
/// With `tenant`, candidates that belong to another tenant of a shared number say so.
pub fn explain(
    router: &Router,
    to: &str,
    from: &str,
    text: &str,
    at: DateTime<Utc>,
    as_tenant: Option<&str>,
) -> Explanation {
    let digits = |s: &str| {
        let t = s.trim();
        let t = t.strip_prefix('+').unwrap_or(t);
        if t.bytes().all(|b| b.is_ascii_digit()) {
            t.to_string()
        } else {
            s.trim().to_string()
        }
    };
    let at_ms = at.timestamp_millis().max(0) as u64;
    let mut record = MessageRecord {
        id: store::format_id(0),
        event: "message".to_string(),
        to: digits(to),
        from: digits(from),
        from_ton_npi: None,
        text: text.to_string(),
        encoding: "gsm7".to_string(),
        keyword: None,
        inbox: None,
        args: None,
        carrier: String::new(),
        received_at: clock::rfc3339_ms(at_ms),
        received_at_ms: at_ms,
        parts: 1,
        complete: true,
        missing_parts: Vec::new(),
        routed: false,
        receipt: None,
        webhooks: Vec::new(),
        consent: None,
        guarded: Vec::new(),
    };
    let number = router.number(&record.to).cloned();
    let routed = number.as_ref().map(|n| router.route(n, text, at));
    // Planning cannot fail without a store (nothing is read or written).
    let jobs = plan(None, router, &mut record, true).unwrap_or_default();
    let (decision, tenant) = match (&number, &routed) {
        (None, _) | (_, None) => ("unrouted".to_string(), None),
        (Some(n), Some(r)) => {
            let tenant = Router::rule(n, &r.decision).and_then(|k| k.tenant.clone());
            let name = match &r.decision {
                Decision::Keyword { .. } => "keyword".to_string(),
                Decision::Expired { .. } => "expired".to_string(),
                Decision::Reserved { kind, phrase } => format!(
                    "reserved ({} word {phrase:?})",
                    match kind {
                        crate::routing::router::ReservedKind::Stop => "opt-out",
                        crate::routing::router::ReservedKind::Start => "opt-in",
                        crate::routing::router::ReservedKind::Help => "help",
                    }
                ),
                Decision::Default => "default".to_string(),
            };
            (name, tenant)
        }
    };
    let actions = jobs
        .iter()
        .map(|job| match (&job.sms, &job.email) {
            (None, Some(email)) => format!("E-mail to {}", email.to.join(", ")),
            (None, None) => format!("POST {} event to webhook {:?}", job.event, job.webhook),
            (Some(sms), _) => {
                let when = if job.due_ms <= at_ms.max(job.created_ms) {
                    "now".to_string()
                } else {
                    clock::rfc3339_ms(job.due_ms)
                };
                format!(
                    "SMS {} from {} via carrier {:?} to {} ({when}): {:?}",
                    sms.purpose, sms.from, sms.carrier, sms.to, sms.text
                )
            }
        })
        .collect();
    Explanation {
        to: record.to.clone(),
        from: record.from.clone(),
        text: text.to_string(),
        at: clock::rfc3339_ms(at_ms),
        number: number.as_ref().map(|n| n.vmn.clone()),
        decision,
        keyword: record.keyword.clone(),
        inbox: record.inbox.clone(),
        tenant,
        args: record.args.clone(),
        actions,
        candidates: routed
            .map(|r| r.candidates)
            .unwrap_or_default()
            .into_iter()
            .map(|mut c| {
                if let (Some(asked), Some(owner)) = (as_tenant, &c.tenant) {
                    if asked != owner {
                        c.outcome = format!("other tenant ({owner}); {}", c.outcome);
                    }
                }
                c
            })
            .collect(),
    }
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "message from {} to {} at {}: {:?}",
            self.from, self.to, self.at, self.text
        )?;
        match &self.number {
            None => writeln!(
                f,
                "unrouted: vmnd does not serve {}; the message would be stored and not forwarded",
                self.to
            )?,
            Some(n) => {
                write!(f, "number {n}: {}", self.decision)?;
                if let Some(k) = &self.keyword {
                    write!(f, " {k:?}")?;
                }
                if let Some(i) = &self.inbox {
                    write!(f, ", inbox {i:?}")?;
                }
                if let Some(t) = &self.tenant {
                    write!(f, ", tenant {t:?}")?;
                }
                if let Some(a) = &self.args {
                    write!(f, ", args {a:?}")?;
                }
                writeln!(f)?;
            }
        }
        if self.actions.is_empty() {
            writeln!(f, "actions: none (stored only)")?;
        } else {
            writeln!(f, "actions:")?;
            for a in &self.actions {
                writeln!(f, "  - {a}")?;
            }
        }
        if !self.candidates.is_empty() {
            writeln!(f, "candidates:")?;
            for c in &self.candidates {
                let tenant = c
                    .tenant
                    .as_deref()
                    .map(|t| format!(" (tenant {t})"))
                    .unwrap_or_default();
                writeln!(f, "  - {:?}{tenant}: {}", c.phrase, c.outcome)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config with number 567678 on carrier "sim"; tests append its keyword tables.
    const NUMBER_567678: &str = r#"
[daemon]
data_dir = "./var"

[[carrier]]
name = "sim"
host = "127.0.0.1"
port = 2775
system_id = "vmnd"
password = "secret"

[[number]]
vmn = "567678"
carrier = "sim"
default = { reply = "ok" }
"#;

    /// A poll answer is compared with the options as keywords are compared with messages:
    /// full-width and compatibility forms, case and edge punctuation do not matter.
    #[test]
    fn poll_answers_match_in_any_form_a_keyword_would() {
        let text = NUMBER_567678.to_string()
            + r#"
[[number.keyword]]
keyword = "VOTE"
kind = "poll"
options = ["A", "1"]
reply = "Counted"
invalid_reply = "Options: {options}"
"#;
        let (config, _) = config::parse(&text, "t.toml", &|_| None).unwrap();
        let router = Router::new(&config);
        let at = Utc::now();
        let reply_of = |message: &str| {
            let e = explain(&router, "567678", "919800000011", message, at, None);
            e.actions.join("\n")
        };
        for message in [
            "VOTE A",
            "vote a!",
            "ＶＯＴＥ Ａ",
            "VOTE ａ",
            "VOTE １",
            "vote,1",
        ] {
            let actions = reply_of(message);
            assert!(actions.contains("Counted"), "{message:?}: {actions}");
        }
        for message in ["VOTE B", "VOTE", "VOTE !!"] {
            let actions = reply_of(message);
            assert!(actions.contains("Options: A, 1"), "{message:?}: {actions}");
        }
    }

    /// Processing a double opt-in keyword again after a crash, once the contact has
    /// confirmed, plans no opt-in request this time; the reply keeps its job id anyway, so it
    /// is rewritten, not queued twice.
    #[test]
    fn a_double_opt_in_planned_again_after_the_confirmation_keeps_its_reply_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8, false).unwrap();
        let text = NUMBER_567678.to_string()
            + r#"
[[number.keyword]]
keyword = "JOIN"
subscribe = "double"
confirm_reply = "Reply YES to confirm"
reply = "Welcome"
"#;
        let (config, _) = config::parse(&text, "t.toml", &|_| None).unwrap();
        let router = Router::new(&config);
        let message = |id: u64, text: &str| {
            let mut record = crate::store::tests::sample_message(id);
            record.to = "567678".into();
            record.from = "919800000011".into();
            record.text = text.into();
            record.received_at_ms = clock::now_ms();
            record
        };
        let purposes = |jobs: &[Job]| -> Vec<(u64, String)> {
            jobs.iter()
                .filter_map(|j| j.sms.as_ref().map(|s| (j.id, s.purpose.clone())))
                .collect()
        };
        let first = plan(Some(&store), &router, &mut message(10, "JOIN"), true).unwrap();
        let first = purposes(&first);
        assert!(first.iter().any(|(_, p)| p == "optin_request"), "{first:?}");
        plan(Some(&store), &router, &mut message(11, "YES"), true).unwrap();
        assert_eq!(
            store.consent_state("567678", "919800000011").unwrap(),
            ConsentState::OptedIn
        );
        let again = plan(Some(&store), &router, &mut message(10, "JOIN"), true).unwrap();
        let again = purposes(&again);
        assert!(
            !again.iter().any(|(_, p)| p == "optin_request"),
            "{again:?}"
        );
        let reply = |planned: &[(u64, String)]| {
            planned
                .iter()
                .find(|(_, p)| p == "reply")
                .map(|(id, _)| *id)
                .expect("a reply")
        };
        assert_eq!(reply(&again), reply(&first), "the reply's id moved");
    }

    #[test]
    fn a_message_gets_at_most_256_jobs_each_with_its_own_id() {
        let mut jobs = Jobs::new(42, 1);
        jobs.push_at(OPTIN_REQUEST_INDEX, String::new(), "message", 1, None);
        for _ in 0..255 {
            assert!(jobs.push("crm".into(), "message", 1, None).is_some());
        }
        assert!(
            jobs.push("crm".into(), "message", 1, None).is_none(),
            "one more would take the reserved index or wrap to the first"
        );
        let record = crate::store::tests::sample_message(42);
        jobs.push_email(&record, &["ops@example.com".to_string()], "message");
        assert_eq!(jobs.jobs.len(), 256);
        assert!(
            jobs.jobs.iter().all(|j| j.email.is_none()),
            "the e-mail that did not fit changed another job"
        );
        let ids: std::collections::HashSet<u64> = jobs.jobs.iter().map(|j| j.id).collect();
        assert_eq!(ids.len(), 256);
    }
}
