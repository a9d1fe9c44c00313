//! The router: for a message to one of our numbers, which rule it matches and why the other
//! candidates did not. Built from the config and the keywords added at run time (kept in the
//! store, see [`Router::with_runtime`]) into one immutable value (keyword trie, reserved words,
//! rules) that the processor reads through an atomically swapped snapshot, so matching takes no
//! lock; the admin API builds and swaps a new one after each keyword change. The same code
//! answers `vmnd route` and `POST /api/route`.
//!
//! Order of checks: opt-out/opt-in/help words first (the consent work acts on them), then the
//! campaign keywords, longest first; a keyword before its `starts` falls to the default rule,
//! one at or after its `expires` is "expired" (its `expiry_reply` and an `expired` event).
//! A keyword is active for `starts <= t < expires`, to the millisecond.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use serde::Serialize;

use crate::config::{Config, KeywordRule, Number, ReplyWindow};
use crate::routing::keywords::{self, KeywordIndex, KeywordIndexBuilder, RuleId};

/// Which reserved list a word is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReservedKind {
    Stop,
    Start,
    Help,
}

/// What a message matched.
#[derive(Debug, Clone)]
pub enum Decision {
    /// An opt-out, opt-in or help word.
    Reserved { kind: ReservedKind, phrase: String },
    /// An active campaign keyword: index into the number's `keywords`.
    Keyword { rule: usize, matched: String },
    /// A keyword past its `expires`.
    Expired { rule: usize, matched: String },
    /// Nothing matched (or the match has not started yet, or the payload is binary).
    Default,
}

/// Why a rule that could have matched did not (or that it did), for explanations.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Candidate {
    pub keyword: String,
    /// The keyword or alias as written that the message's words matched.
    pub phrase: String,
    pub tenant: Option<String>,
    pub outcome: String,
}

/// The router's answer for one message.
#[derive(Debug, Clone)]
pub struct Routed {
    pub decision: Decision,
    /// What follows the matched words, as the sender wrote it.
    pub args: Option<String>,
    pub candidates: Vec<Candidate>,
}

/// One phrase in an index: which number, which rule, and the phrase as written.
#[derive(Debug, Clone)]
struct Phrase {
    rule: usize,
    written: String,
}

/// Everything matching needs, immutable once built.
pub struct Router {
    /// Each number with its config keywords first, then those added at run time.
    numbers: HashMap<String, Arc<Number>>,
    /// The keywords added at run time that this snapshot routes (number, rule), so the admin
    /// API can build the next one from it.
    runtime: Vec<(String, KeywordRule)>,
    keywords: KeywordIndex,
    phrases: Vec<Phrase>,
    reserved: KeywordIndex,
    reserved_phrases: Vec<(ReservedKind, String)>,
}

impl Router {
    /// Builds the router from the config alone.
    pub fn new(config: &Config) -> Router {
        Router::with_runtime(config, &[])
    }

    /// Builds the router from the config and the keywords added at run time, each given with
    /// its number's VMN (one the config does not serve is ignored). They come after the
    /// number's config keywords, so on a clash (which their validation prevents) the config's
    /// wins: a phrase inserted twice keeps the first rule.
    pub fn with_runtime(config: &Config, runtime: &[(String, KeywordRule)]) -> Router {
        let mut numbers: Vec<Number> = config.numbers.clone();
        let at: HashMap<&str, usize> = config
            .numbers
            .iter()
            .enumerate()
            .map(|(i, n)| (n.vmn.as_str(), i))
            .collect();
        let mut kept = Vec::with_capacity(runtime.len());
        for (vmn, rule) in runtime {
            if let Some(&i) = at.get(vmn.as_str()) {
                numbers[i].keywords.push(rule.clone());
                kept.push((vmn.clone(), rule.clone()));
            }
        }
        let mut builder = KeywordIndexBuilder::new();
        let mut phrases = Vec::new();
        let mut reserved_builder = KeywordIndexBuilder::new();
        let mut reserved_phrases = Vec::new();
        for number in &numbers {
            for (rule, kw) in number.keywords.iter().enumerate() {
                for written in std::iter::once(&kw.keyword).chain(kw.aliases.iter()) {
                    let Ok(words) = keywords::keyword_words(written) else {
                        continue;
                    };
                    let id = RuleId(phrases.len() as u32);
                    if builder.insert(&number.vmn, &words, id).is_ok() {
                        phrases.push(Phrase {
                            rule,
                            written: written.clone(),
                        });
                    }
                }
            }
            let lists = [
                (ReservedKind::Stop, &number.reserved.stop),
                (ReservedKind::Start, &number.reserved.start),
                (ReservedKind::Help, &number.reserved.help),
            ];
            for (kind, list) in lists {
                for written in list {
                    let Ok(words) = keywords::keyword_words(written) else {
                        continue;
                    };
                    let id = RuleId(reserved_phrases.len() as u32);
                    if reserved_builder.insert(&number.vmn, &words, id).is_ok() {
                        reserved_phrases.push((kind, written.clone()));
                    }
                }
            }
        }
        Router {
            numbers: numbers
                .into_iter()
                .map(|n| (n.vmn.clone(), Arc::new(n)))
                .collect(),
            runtime: kept,
            keywords: builder.build(),
            phrases,
            reserved: reserved_builder.build(),
            reserved_phrases,
        }
    }

    /// The configured number for a destination as received: exact digits, or, for a long
    /// code sent in international form (country code + 10 digits), its last 10 digits.
    pub fn number(&self, to_digits: &str) -> Option<&Arc<Number>> {
        if let Some(n) = self.numbers.get(to_digits) {
            return Some(n);
        }
        if (11..=13).contains(&to_digits.len()) && to_digits.bytes().all(|b| b.is_ascii_digit()) {
            return self.numbers.get(&to_digits[to_digits.len() - 10..]);
        }
        None
    }

    /// Matches `text` (sent at `at`) against `number`'s rules.
    pub fn route(&self, number: &Number, text: &str, at: DateTime<Utc>) -> Routed {
        // Keywords are at most 5 words: the rest of a long message need not be folded.
        let normalized = keywords::normalize_prefix(text, 6);
        let words = normalized.words();
        let vmn = number.vmn.as_str();
        let mut candidates = Vec::new();
        if let Some((id, n)) = self.reserved.longest(vmn, words) {
            let (kind, phrase) = self.reserved_phrases[id.0 as usize].clone();
            for (other, _) in self.keywords.matches(vmn, words) {
                let p = &self.phrases[other.0 as usize];
                let outcome = format!(
                    "not considered: {phrase:?} is a reserved {} word, checked before campaign keywords",
                    kind_name(kind)
                );
                candidates.push(self.candidate(number, p, outcome));
            }
            return Routed {
                decision: Decision::Reserved { kind, phrase },
                args: normalized.args_after(n).map(str::to_string),
                candidates,
            };
        }
        let matches = self.keywords.matches(vmn, words);
        let Some(&(best, n)) = matches.first() else {
            return Routed {
                decision: Decision::Default,
                args: None,
                candidates: self.near_misses(number, words.first().map(String::as_str)),
            };
        };
        let best_phrase = &self.phrases[best.0 as usize];
        let rule = &number.keywords[best_phrase.rule];
        let at_ms = at.timestamp_millis();
        let (decision, outcome) = if rule.starts.is_some_and(|s| at_ms < s.timestamp_millis()) {
            let starts = rule.starts.map(|s| s.to_rfc3339()).unwrap_or_default();
            (
                Decision::Default,
                format!("not started: starts {starts}; the message falls to the default rule"),
            )
        } else if rule.expires.is_some_and(|e| at_ms >= e.timestamp_millis()) {
            let expires = rule.expires.map(|e| e.to_rfc3339()).unwrap_or_default();
            (
                Decision::Expired {
                    rule: best_phrase.rule,
                    matched: best_phrase.written.clone(),
                },
                format!("expired: expires {expires}; answered with its expiry reply"),
            )
        } else {
            (
                Decision::Keyword {
                    rule: best_phrase.rule,
                    matched: best_phrase.written.clone(),
                },
                "matched (longest match)".to_string(),
            )
        };
        candidates.push(self.candidate(number, best_phrase, outcome));
        for &(other, _) in &matches[1..] {
            let p = &self.phrases[other.0 as usize];
            candidates.push(self.candidate(
                number,
                p,
                format!("shorter than the longer match {:?}", best_phrase.written),
            ));
        }
        let args = match decision {
            Decision::Default => None,
            _ => normalized.args_after(n).map(str::to_string),
        };
        Routed {
            decision,
            args,
            candidates,
        }
    }

    fn candidate(&self, number: &Number, phrase: &Phrase, outcome: String) -> Candidate {
        let rule = &number.keywords[phrase.rule];
        Candidate {
            keyword: rule.keyword.clone(),
            phrase: phrase.written.clone(),
            tenant: rule.tenant.clone(),
            outcome,
        }
    }

    /// For a message that matched nothing: the number's keywords and why each did not match.
    fn near_misses(&self, number: &Number, first_word: Option<&str>) -> Vec<Candidate> {
        let said = match first_word {
            Some(w) => format!("the message starts with {w:?}"),
            None => "the message has no words".to_string(),
        };
        number
            .keywords
            .iter()
            .take(50)
            .map(|rule| Candidate {
                keyword: rule.keyword.clone(),
                phrase: rule.keyword.clone(),
                tenant: rule.tenant.clone(),
                outcome: format!("not matched: {said}"),
            })
            .collect()
    }

    /// The rule a decision names.
    pub fn rule<'a>(number: &'a Number, decision: &Decision) -> Option<&'a KeywordRule> {
        match decision {
            Decision::Keyword { rule, .. } | Decision::Expired { rule, .. } => {
                number.keywords.get(*rule)
            }
            _ => None,
        }
    }

    pub fn keyword_count(&self) -> usize {
        self.keywords.len()
    }

    /// The keywords added at run time that this snapshot routes, as (VMN, rule), in the order
    /// they were given to [`Router::with_runtime`].
    pub fn runtime_keywords(&self) -> &[(String, KeywordRule)] {
        &self.runtime
    }
}

fn kind_name(kind: ReservedKind) -> &'static str {
    match kind {
        ReservedKind::Stop => "opt-out",
        ReservedKind::Start => "opt-in",
        ReservedKind::Help => "help",
    }
}

/// The first moment at or after `at` inside the daily window (in the window's time zone).
pub fn next_opening(window: &ReplyWindow, at: DateTime<Utc>) -> DateTime<Utc> {
    let local = at.with_timezone(&window.tz);
    let time = local.time();
    let inside = if window.start < window.end {
        time >= window.start && time < window.end
    } else {
        // Wraps midnight: 22:00-06:00.
        time >= window.start || time < window.end
    };
    if inside {
        return at;
    }
    // The next start: today if still ahead, else tomorrow. A start that does not exist that
    // day (a DST gap) moves to the next day that has it.
    for days in 0..3 {
        let date = local.date_naive() + ChronoDuration::days(days);
        if days == 0 && time >= window.start {
            continue;
        }
        let naive = date.and_time(window.start);
        if let Some(opening) = window.tz.from_local_datetime(&naive).earliest() {
            let opening = opening.with_timezone(&Utc);
            if opening >= at {
                return opening;
            }
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[daemon]
data_dir = "./var"

[[webhook]]
name = "crm"
url = "http://127.0.0.1:8080/sms"

[[number]]
vmn = "567678"
default = { webhook = "crm" }

[[number.keyword]]
keyword = "JOIN"
inbox = "from-config"
"#;

    fn rule(keyword: &str, inbox: &str) -> KeywordRule {
        let config = crate::config::parse(CONFIG, "t.toml", &|_| None)
            .expect("valid")
            .0;
        let mut rule = config.numbers[0].keywords[0].clone();
        rule.keyword = keyword.to_string();
        rule.inbox = inbox.to_string();
        rule
    }

    fn matched(router: &Router, text: &str) -> Option<String> {
        let number = router.number("567678").expect("served");
        let routed = router.route(number, text, Utc::now());
        Router::rule(number, &routed.decision).map(|r| r.inbox.clone())
    }

    #[test]
    fn runtime_keywords_join_their_number_and_the_config_wins_a_clash() {
        let config = crate::config::parse(CONFIG, "t.toml", &|_| None)
            .expect("valid")
            .0;
        let runtime = [
            ("567678".to_string(), rule("GO", "from-api")),
            ("567678".to_string(), rule("join", "clash")),
            ("111111".to_string(), rule("LOST", "not-served")),
        ];
        let router = Router::with_runtime(&config, &runtime);
        assert_eq!(matched(&router, "go now").as_deref(), Some("from-api"));
        assert_eq!(matched(&router, "join").as_deref(), Some("from-config"));
        assert_eq!(router.keyword_count(), 2, "JOIN once, GO");
        // The number's rules: the config's first, then the runtime ones it serves.
        let number = router.number("567678").expect("served");
        assert_eq!(number.keywords.len(), 3);
        assert_eq!(router.runtime_keywords().len(), 2, "111111 is not served");
        // Router::new is the config alone.
        assert_eq!(matched(&Router::new(&config), "go"), None);
    }
}
