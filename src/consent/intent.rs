//! Opt-out written in words ("please stop texting me", "unsubscribe me"), recognised in English,
//! conservatively. Off by default; a number enables it.
//!
//! Why conservative: a false opt-out silences someone who wanted the messages, and nothing tells
//! them; a missed one is still caught by the STOP keyword, and the business can read the message.
//! So every rule below only ever turns a match into "no opt-out", never the other way round, and
//! [`detect_optout`] answers `None` whenever it is in doubt.
//!
//! Normalisation (no allocation; the text is kept for the phrase reported to the ledger):
//! - A word is a run of letters, digits, apostrophes and hyphens (`don't`, `non-stop`,
//!   `opt-out`), trimmed of apostrophes and hyphens at its edges (`'stop'` is `stop`). Everything
//!   else separates words, and word order is kept.
//! - Words compare in lower case with curly apostrophes and backticks folded to `'` (`DON’T` is
//!   `don't`). A word with any other non-ASCII character, or longer than 16 bytes, matches nothing:
//!   the phrases are English.
//! - `.` `!` `?` `;` `…`, line breaks and their full-width forms end a sentence; `,` `:` brackets
//!   and dashes end a clause. A phrase never spans a clause. A sentence followed by `?` is a
//!   question.
//! - Messages of more than 64 words are not examined: people who want out write short messages, a
//!   long one is a conversation for a person to read, and this bounds the cost per message.
//!
//! Phrases (case-insensitive; `STOP` is any of stop / quit / cease; `me` is also `us`, `my number`,
//! `this number`, `my phone`):
//! - anywhere in a clause: `STOP texting|messaging|sending|contacting|spamming|bothering me`
//!   (also `stop calling and texting me`, `stop sending me these texts`), `STOP text|message me`,
//!   `STOP receiving|getting (these|your) texts`, `STOP (all) (these|the|your) texts|messages|sms`,
//!   `unsubscribe (me) (from this list)`, `remove me|my number (from your list)`, `take|get me off
//!   (this|your|the) list`, `opt me out`, `opt out (of these texts)`, `leave me alone`;
//! - as a request (nothing but fillers such as "please", "just", "can you" before it in its clause,
//!   or "I want you to ..."): `STOP texting|sending (these texts)` without `me`, because "I'll stop
//!   texting now" is the customer talking about themselves;
//! - as an order (nothing but fillers before it in its clause): `no more texts|messages`,
//!   `don't|do not text|message|contact me again|anymore|any more`, `don't ever text me`, `don't
//!   send me (these) texts`, `never text me again`, `I don't want (any more|these) texts`, `I do not
//!   wish to receive texts`, `I don't want to be contacted`. The order position keeps "you don't
//!   text me anymore" (a complaint that messages stopped) out, and `again|anymore` keeps "don't
//!   text me, I'm driving" out;
//! - the whole message: `stop`, `stop all`, `unsubscribe`, `opt out` with only "please", "now",
//!   "thanks", "just"... around them ("please stop", "Stop, please!", "STOP STOP"), and no `?`.
//!
//! Rejections (any one makes the phrase no opt-out):
//! - a negation before it in its clause: not, no, never, don't, can't, won't, didn't, ... ("don't
//!   stop texting me", "I didn't unsubscribe", "they won't stop texting me"), or right before it in
//!   an earlier clause of the sentence ("never, ever stop texting me");
//! - a hedge before it in its clause: was, were, maybe, might, should, almost, did, does, before,
//!   after, thinking, ... ("I was going to unsubscribe");
//! - a question word or condition anywhere before it in its sentence: why, how, what, when, where,
//!   who, if, unless, until, whether, once ("why did you stop texting me", "how do I stop my order",
//!   "if you stop texting me");
//! - a question, unless it is a request: "can|could|would|will you ..." at the start of the
//!   sentence ("Can you please stop texting me?" is an opt-out, "Stop texting me?" is not);
//! - `to` right before it, unless after a wish or request ("I want to unsubscribe", "I asked you to
//!   stop texting me"): "Reply STOP to unsubscribe", quoted back, is no opt-out;
//! - anything after it in its clause except "please", "now", "again", "anymore", "for good",
//!   "thank you", "to|on this number"... or words that start a new clause without a comma (I,
//!   it's, this is, you, and, or, because...): "stop texting me so early", "stop texting me until
//!   Monday", "stop sending me the wrong size", "the unsubscribe link is broken" are no opt-outs;
//! - a joke marker anywhere in the message (lol, haha, jk, kidding, ...).
//!
//! No phrase matches "stop by", "bus stop", "non-stop", "stop the price increase", "how do I stop
//! my order" or "I can't stop laughing": they are `None` without any rejection rule.

/// Most words examined in a message (see the module docs).
const MAX_WORDS: usize = 64;
/// Longest word that can match, in bytes of its normalised form ("notifications" is 13).
const MAX_WORD_BYTES: usize = 16;
/// Most words in a whole-message opt-out such as "stop now please thank you".
const MAX_SHORT_WORDS: usize = 8;

/// An opt-out written in words, recognised conservatively. Returns the phrase as it appears in the
/// text (original casing) when the message clearly asks to stop receiving messages.
///
/// The phrase is what the ledger records: `"Please STOP texting me!!"` gives `"STOP texting me"`,
/// `"I want to unsubscribe"` gives the whole of it, a whole-message opt-out such as `"Stop,
/// please!"` gives `"Stop, please"`. See the module docs for the rules; `None` when in doubt.
pub fn detect_optout(text: &str) -> Option<String> {
    let words = Words::new(text)?;
    let found = words.short_form().or_else(|| words.find_phrase())?;
    // Checked last: it reads the whole message, and most messages never get this far.
    if words.list().iter().any(|w| w.is(JOKES)) {
        return None;
    }
    let (start, end) = found;
    let list = words.list();
    Some(text[list[start].start..list[end - 1].end].to_owned())
}

/// One word of the message.
#[derive(Debug, Clone, Copy)]
struct Word {
    /// Byte range in the original text, edge punctuation excluded.
    start: usize,
    end: usize,
    /// The normalised form (ASCII lower case, apostrophes folded); `len == 0` when it cannot match
    /// any phrase word (non-ASCII letters, too long).
    norm: [u8; MAX_WORD_BYTES],
    len: u8,
    /// Index of its clause and of its sentence in the message.
    clause: u8,
    sentence: u8,
}

impl Word {
    const EMPTY: Word = Word {
        start: 0,
        end: 0,
        norm: [0; MAX_WORD_BYTES],
        len: 0,
        clause: 0,
        sentence: 0,
    };

    /// Whether the word is one of `set` (lower case, `'` for apostrophes).
    fn is(&self, set: &[&str]) -> bool {
        let norm = &self.norm[..usize::from(self.len)];
        self.len > 0 && set.iter().any(|w| w.as_bytes() == norm)
    }
}

/// How strongly the characters between two words separate them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Break {
    None,
    Clause,
    Sentence,
}

/// A message cut into words, on the stack: this runs for every message on numbers that enable it.
struct Words {
    list: [Word; MAX_WORDS],
    len: usize,
    /// Bit `s` is set when sentence `s` ends with a question mark.
    questions: u64,
}

impl Words {
    /// Cuts `text` into words; `None` when it has more than [`MAX_WORDS`].
    fn new(text: &str) -> Option<Words> {
        let mut words = Words {
            list: [Word::EMPTY; MAX_WORDS],
            len: 0,
            questions: 0,
        };
        let (mut clause, mut sentence) = (0u8, 0u8);
        let mut brk = Break::None;
        let mut question = false;
        let mut chars = text.char_indices().peekable();
        while let Some((start, c)) = chars.next() {
            if !is_word_char(c) {
                brk = brk.max(break_after(c));
                question |= is_question_mark(c);
                continue;
            }
            let mut end = start + c.len_utf8();
            while let Some(&(i, d)) = chars.peek() {
                if !is_word_char(d) {
                    break;
                }
                end = i + d.len_utf8();
                chars.next();
            }
            let run = &text[start..end];
            let word = run.trim_matches(is_edge_char);
            if word.is_empty() {
                // A lone dash (" - ") separates clauses like a comma; a lone apostrophe is nothing.
                if run.chars().any(is_hyphen) {
                    brk = brk.max(Break::Clause);
                }
                continue;
            }
            if words.len == MAX_WORDS {
                return None;
            }
            // Punctuation before the first word separates nothing.
            if words.len > 0 {
                match brk {
                    Break::Sentence => {
                        if question {
                            words.questions |= 1 << sentence;
                        }
                        sentence += 1;
                        clause += 1;
                    }
                    Break::Clause => clause += 1,
                    Break::None => {}
                }
            }
            brk = Break::None;
            question = false;
            let offset = start + (run.len() - run.trim_start_matches(is_edge_char).len());
            let mut w = Word {
                start: offset,
                end: offset + word.len(),
                clause,
                sentence,
                ..Word::EMPTY
            };
            normalize_into(word, &mut w);
            words.list[words.len] = w;
            words.len += 1;
        }
        if question && words.len > 0 {
            words.questions |= 1 << sentence;
        }
        Some(words)
    }

    fn list(&self) -> &[Word] {
        &self.list[..self.len]
    }

    /// Whether sentence `s` is a question.
    fn is_question(&self, s: u8) -> bool {
        self.questions & (1 << s) != 0
    }

    /// The whole message as a bare opt-out word with fillers ("please stop"): the word range.
    fn short_form(&self) -> Option<(usize, usize)> {
        let list = self.list();
        if list.is_empty() || list.len() > MAX_SHORT_WORDS || self.questions != 0 {
            return None;
        }
        let mut core = false;
        let mut i = 0;
        while i < list.len() {
            if let Some(j) = first_match(&SHORT_CORE, list, i) {
                core = true;
                i = j;
            } else {
                i = first_match(&SHORT_FILLER, list, i)?;
            }
        }
        core.then_some((0, list.len()))
    }

    /// The first phrase that passes every check (see the module docs): its word range.
    fn find_phrase(&self) -> Option<(usize, usize)> {
        let list = self.list();
        let mut clause_end = 0;
        for i in 0..list.len() {
            if clause_end <= i {
                clause_end = i + list[i..]
                    .iter()
                    .position(|w| w.clause != list[i].clause)
                    .unwrap_or(list.len() - i);
            }
            // A phrase never spans a clause, and neither does what may follow it.
            let scope = &list[..clause_end];
            for rule in RULES {
                let mut end = None;
                run(&rule.pattern, scope, i, &mut |j| {
                    let ok = tail_ok(scope, j);
                    if ok {
                        end = Some(j);
                    }
                    ok
                });
                if let Some(end) = end
                    && let Some(start) = self.context_ok(i, rule.position)
                {
                    return Some((start, end));
                }
            }
        }
        None
    }

    /// Whether what comes before word `i` in its sentence lets a phrase starting there be an
    /// opt-out; if so, where the reported phrase starts (earlier than `i` for "I want to ...").
    fn context_ok(&self, i: usize, position: Position) -> Option<usize> {
        let list = self.list();
        let here = list[i];
        let sentence_start = list[..i]
            .iter()
            .rposition(|w| w.sentence != here.sentence)
            .map_or(0, |p| p + 1);
        let clause_start = list[..i]
            .iter()
            .rposition(|w| w.clause != here.clause)
            .map_or(0, |p| p + 1);

        if list[sentence_start..i]
            .iter()
            .any(|w| w.is(QUESTION_OR_CONDITION))
        {
            return None;
        }
        if list[clause_start..i]
            .iter()
            .any(|w| w.is(NEGATIONS) || w.is(HEDGES))
        {
            return None;
        }
        // "Never, ever stop texting me": the nearest meaningful word of the earlier clauses. "No,"
        // is left out: "No, please stop texting me" answers something else and then opts out.
        if let Some(w) = list[sentence_start..clause_start]
            .iter()
            .rev()
            .find(|w| !w.is(FILLERS))
            && w.is(NEGATIONS)
            && !w.is(&["no", "nope", "nah"])
        {
            return None;
        }
        if self.is_question(here.sentence) && !starts_with_request(&list[sentence_start..i]) {
            return None;
        }

        if i > clause_start && list[i - 1].is(&["to"]) {
            return lead_in(&list[clause_start..i - 1], position).map(|s| clause_start + s);
        }
        let before = &list[clause_start..i];
        let ok = match position {
            Position::Anywhere => true,
            Position::Request => only_fillers(skip_request(before)),
            Position::Order => only_fillers(before),
        };
        ok.then_some(i)
    }
}

/// "I want to", "I asked you to": the words before a phrase's `to` (in its clause, `to` excluded)
/// make it a wish or a request; the start of the reported phrase within `before`.
fn lead_in(before: &[Word], position: Position) -> Option<usize> {
    let mut k = before.len();
    let mut addressed = false;
    // "want you guys to", "asked them to".
    while k > 0 && before.len() - k < 2 && before[k - 1].is(ADDRESSEES) {
        addressed = true;
        k -= 1;
    }
    if k == 0 || !before[k - 1].is(WISHES) {
        return None;
    }
    match position {
        Position::Anywhere => {}
        // "I'll try to stop texting" is the customer about themselves; "I want you to" is not.
        Position::Request if addressed => {}
        Position::Request | Position::Order => return None,
    }
    k -= 1;
    while k > 0 && before[k - 1].is(SUBJECTS) {
        k -= 1;
    }
    Some(k)
}

/// Whether a question is a polite request: "can|could|would|will you" first in its sentence,
/// after greetings ("Hi, could you please stop texting me?").
fn starts_with_request(sentence: &[Word]) -> bool {
    let rest = skip_greetings(sentence);
    rest.len() >= 2 && rest[0].is(REQUEST_VERBS) && rest[1].is(ADDRESSEES)
}

/// Past the greetings at the start of `words`.
fn skip_greetings(words: &[Word]) -> &[Word] {
    let n = words.iter().take_while(|w| w.is(GREETINGS)).count();
    &words[n..]
}

/// Past an opening "can you" / "could you please" request at the start of `words`.
fn skip_request(words: &[Word]) -> &[Word] {
    let rest = skip_greetings(words);
    if rest.len() >= 2 && rest[0].is(REQUEST_VERBS) && rest[1].is(ADDRESSEES) {
        &rest[2..]
    } else {
        words
    }
}

fn only_fillers(words: &[Word]) -> bool {
    words.iter().all(|w| w.is(FILLERS))
}

/// Whether what follows a phrase ending before word `j` in its clause leaves it an opt-out.
fn tail_ok(scope: &[Word], mut j: usize) -> bool {
    while j < scope.len() {
        if first_match(&CLAUSE_STARTER, scope, j).is_some() {
            return true;
        }
        match first_match(&TAIL_ITEM, scope, j) {
            Some(next) => j = next,
            None => return false,
        }
    }
    true
}

/// A pattern over words, matched with backtracking (patterns are a handful of words).
#[derive(Debug)]
enum Pat {
    /// One word of the set.
    Word(&'static [&'static str]),
    /// These in order.
    Seq(&'static [Pat]),
    /// One of these.
    Any(&'static [Pat]),
    /// This, or nothing.
    Opt(&'static Pat),
}

/// Where a phrase may stand in its clause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// After anything but the rejected words.
    Anywhere,
    /// After fillers only, an opening "can you", or "I want you to".
    Request,
    /// After fillers only.
    Order,
}

/// One phrase of the module docs.
#[derive(Debug)]
struct Rule {
    pattern: Pat,
    position: Position,
}

/// Matches `p` at word `i` of `words` and calls `k` with each possible end, longest first, until
/// `k` accepts one; whether one was accepted.
fn run(p: &Pat, words: &[Word], i: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    match p {
        Pat::Word(set) => i < words.len() && words[i].is(set) && k(i + 1),
        Pat::Seq(ps) => run_seq(ps, words, i, k),
        Pat::Any(ps) => ps.iter().any(|p| run(p, words, i, k)),
        Pat::Opt(p) => run(p, words, i, k) || k(i),
    }
}

fn run_seq(ps: &[Pat], words: &[Word], i: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    match ps.split_first() {
        None => k(i),
        Some((first, rest)) => run(first, words, i, &mut |j| run_seq(rest, words, j, k)),
    }
}

/// The end of the longest match of `p` at word `i`.
fn first_match(p: &Pat, words: &[Word], i: usize) -> Option<usize> {
    let mut end = None;
    run(p, words, i, &mut |j| {
        end = Some(j);
        true
    });
    end
}

fn is_apostrophe(c: char) -> bool {
    matches!(
        c,
        '\'' | '\u{2018}' | '\u{2019}' | '\u{02BC}' | '`' | '\u{00B4}' | '\u{2032}'
    )
}

fn is_hyphen(c: char) -> bool {
    matches!(c, '-' | '\u{2010}' | '\u{2011}')
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || is_apostrophe(c) || is_hyphen(c)
}

fn is_edge_char(c: char) -> bool {
    is_apostrophe(c) || is_hyphen(c)
}

fn is_question_mark(c: char) -> bool {
    matches!(c, '?' | '\u{FF1F}' | '\u{2047}' | '\u{203D}')
}

/// How a character that is not part of a word separates the words around it.
fn break_after(c: char) -> Break {
    match c {
        '.' | '!' | '?' | ';' | '\n' | '\r' | '\u{2026}' | '\u{00BF}' | '\u{00A1}' | '\u{203C}'
        | '\u{2047}' | '\u{203D}' | '\u{3002}' | '\u{FF01}' | '\u{FF1F}' | '\u{FF1B}'
        | '\u{2028}' | '\u{2029}' => Break::Sentence,
        ',' | ':' | '(' | ')' | '[' | ']' | '{' | '}' | '\u{2013}' | '\u{2014}' | '\u{FF0C}'
        | '\u{FF1A}' | '\u{3001}' | '\u{060C}' => Break::Clause,
        _ => Break::None,
    }
}

/// Fills `w.norm` from `word`, or leaves `w.len` at 0 when the word cannot match a phrase word.
fn normalize_into(word: &str, w: &mut Word) {
    let mut len = 0;
    for c in word.chars() {
        let b = if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase() as u8
        } else if is_apostrophe(c) {
            b'\''
        } else if is_hyphen(c) {
            b'-'
        } else {
            return;
        };
        if len == MAX_WORD_BYTES {
            return;
        }
        w.norm[len] = b;
        len += 1;
    }
    // At most MAX_WORD_BYTES (16), checked above.
    w.len = len as u8;
}

// ---- Word sets. Lower case, `'` for every apostrophe. The longer lists are kept out of rustfmt,
// which would put one word per line and make them hard to read and review. ----

#[rustfmt::skip]
const NEGATIONS: &[&str] = &[
    "not", "no", "nope", "nah", "never", "neither", "nor", "nobody", "nothing", "without", "don't",
    "dont", "doesn't", "doesnt", "didn't", "didnt", "can't", "cant", "cannot", "won't", "wont",
    "wouldn't", "wouldnt", "shouldn't", "shouldnt", "couldn't", "couldnt", "isn't", "isnt",
    "aren't", "arent", "wasn't", "wasnt", "weren't", "werent", "haven't", "havent", "hasn't",
    "hasnt", "hadn't", "hadnt", "ain't", "aint", "mustn't", "mustnt", "needn't", "shan't",
];

#[rustfmt::skip]
const HEDGES: &[&str] = &[
    "was", "were", "maybe", "might", "may", "perhaps", "probably", "almost", "nearly", "should",
    "shall", "supposed", "pretend", "pretending", "thinking", "considering", "did", "does",
    "before", "after", "wonder", "wondering",
];

const QUESTION_OR_CONDITION: &[&str] = &[
    "why", "how", "what", "what's", "whats", "when", "whenever", "where", "who", "whom", "which",
    "if", "unless", "until", "till", "til", "whether", "once", "suppose", "imagine",
];

#[rustfmt::skip]
const JOKES: &[&str] = &[
    "lol", "lolol", "lmao", "lmfao", "rofl", "haha", "hahaha", "hehe", "jk", "jking", "kidding",
    "joking", "joke", "jokes", "sarcasm", "sarcastic",
];

/// Words that may stand before a request or an order without changing it.
#[rustfmt::skip]
const FILLERS: &[&str] = &[
    "please", "pls", "plz", "plse", "pleas", "plez", "kindly", "just", "so", "and", "ok", "okay",
    "hey", "hi", "hello", "now", "then", "seriously", "honestly", "really", "ever", "again", "guys",
    "sir", "yes", "yeah", "yea", "yep", "also", "oh", "omg", "ugh", "dude", "look", "listen", "um",
    "well", "stop",
];

const GREETINGS: &[&str] = &[
    "hey", "hi", "hello", "ok", "okay", "so", "um", "please", "pls", "plz", "sir", "yo",
];

const REQUEST_VERBS: &[&str] = &["can", "could", "would", "will"];

const ADDRESSEES: &[&str] = &["you", "u", "ya", "y'all", "yall", "them", "guys"];

/// Verbs that make "to <phrase>" a wish or a request ("I want to", "I asked you to").
#[rustfmt::skip]
const WISHES: &[&str] = &[
    "want", "wants", "wanted", "need", "needs", "needed", "like", "love", "wish", "ask", "asked",
    "asking", "tell", "told", "telling", "beg", "begged", "begging", "going", "trying", "tried",
    "try", "have", "has", "got", "hoping", "hope", "decided", "request", "requested", "prefer",
    "demand",
];

/// Words before a wish that belong to the reported phrase ("I'd really like to").
const SUBJECTS: &[&str] = &[
    "i", "i'd", "id", "i'm", "im", "we", "we'd", "we're", "you", "u", "would", "really", "just",
    "do", "am",
];

/// Words that start a new clause when people leave out the comma: "stop texting me I never
/// signed up", "stop texting me this is harassment". What follows is not part of the phrase. A bare
/// "this" or "it" is not one: in "stop sending this invoice" it is what is sent.
const CLAUSE_STARTER: Pat = Pat::Any(&[
    Pat::Word(&[
        "i", "i'm", "im", "i've", "ive", "i'll", "i'd", "we", "we're", "that's", "thats", "it's",
        "you", "you're", "youre", "u", "who", "whoever", "or", "and", "because", "cause", "cuz",
        "coz", "since", "as",
    ]),
    Pat::Seq(&[
        Pat::Word(&["this", "that", "it"]),
        Pat::Word(&["is", "was", "isn't", "isnt"]),
    ]),
]);

const STOP: Pat = Pat::Word(&["stop", "quit", "cease"]);

/// Verbs for sending a message, in the -ing form that follows "stop".
#[rustfmt::skip]
const SMS_ING: Pat = Pat::Word(&[
    "texting", "txting", "texing", "textin", "messaging", "msging", "messeging", "sending",
    "contacting", "spamming", "bothering", "harassing", "pestering",
]);

/// Other ways of contacting, opted out of only together with texts ("stop calling and texting").
const OTHER_ING: Pat = Pat::Word(&["calling", "emailing", "ringing", "phoning"]);
const AND: Pat = Pat::Word(&["and", "or", "n", "nor"]);
const OTHER_THEN: Pat = Pat::Seq(&[OTHER_ING, Pat::Opt(&AND)]);
const AND_OTHER: Pat = Pat::Seq(&[AND, OTHER_ING]);

/// Base forms after "stop" ("stop text me") and "don't" ("don't text me").
const SMS_VERB: Pat = Pat::Word(&[
    "text", "txt", "message", "msg", "sms", "contact", "spam", "bother", "harass",
]);

const ME: Pat = Pat::Any(&[
    Pat::Word(&["me", "us"]),
    Pat::Seq(&[
        Pat::Word(&["my", "this", "our"]),
        Pat::Opt(&Pat::Word(&["phone", "cell", "mobile"])),
        Pat::Word(&["number", "phone", "cell", "mobile", "line"]),
    ]),
]);

const DETERMINER: Pat = Pat::Word(&[
    "the", "these", "those", "this", "your", "ur", "such", "that", "ya", "yo",
]);

/// What is opted out of after "stop", "no more": messages and nothing else.
#[rustfmt::skip]
const MSG_NOUN: Pat = Pat::Any(&[
    Pat::Seq(&[
        Pat::Word(&[
            "text", "sms", "marketing", "promotional", "promo", "spam", "junk",
        ]),
        Pat::Word(&["messages", "msgs", "texts", "alerts"]),
    ]),
    Pat::Word(&[
        "texts", "txts", "messages", "msgs", "sms", "smses", "smss", "spam",
    ]),
]);

/// What is opted out of after "stop sending me", "don't want": messages of any kind.
#[rustfmt::skip]
const SENT_NOUN: Pat = Pat::Any(&[
    MSG_NOUN,
    Pat::Word(&[
        "ads", "promos", "promotions", "offers", "deals", "alerts", "notifications", "reminders",
        "updates", "stuff", "junk", "crap", "garbage", "coupons",
    ]),
]);

/// "(all) (of) (these) texts", "any more messages", or a pronoun for them ("stop sending these").
const SENT_OBJECT: Pat = Pat::Any(&[
    Pat::Seq(&[
        Pat::Opt(&Pat::Word(&["all", "any"])),
        Pat::Opt(&Pat::Word(&["of", "more"])),
        Pat::Opt(&DETERMINER),
        SENT_NOUN,
    ]),
    Pat::Word(&["these", "those", "them"]),
]);

/// What one is removed from.
#[rustfmt::skip]
const LIST_NOUN: Pat = Pat::Any(&[
    Pat::Seq(&[
        Pat::Word(&[
            "mailing", "texting", "text", "sms", "messaging", "contact", "marketing",
            "distribution", "subscriber", "subscription", "call", "calling",
        ]),
        Pat::Word(&["list", "lists"]),
    ]),
    Pat::Word(&[
        "list", "lists", "database", "system", "contacts", "records", "subscription",
        "subscriptions", "texts", "txts", "messages", "msgs", "sms", "alerts", "notifications",
    ]),
]);

/// "(all) (your) list", after "from" or "off".
const LIST_OBJECT: Pat = Pat::Seq(&[
    Pat::Opt(&Pat::Word(&["all", "any"])),
    Pat::Opt(&Pat::Word(&[
        "the", "this", "these", "your", "ur", "that", "those", "our",
    ])),
    LIST_NOUN,
]);

const FROM_LIST: Pat = Pat::Seq(&[
    Pat::Word(&["from", "off"]),
    Pat::Opt(&Pat::Word(&["of"])),
    LIST_OBJECT,
]);

const DONT: Pat = Pat::Any(&[
    Pat::Seq(&[Pat::Word(&["do"]), Pat::Word(&["not"])]),
    Pat::Word(&["don't", "dont"]),
]);

const EVER: Pat = Pat::Word(&["ever"]);

/// "again", "anymore", "any more", "no more", "ever again" (first, so that the phrase keeps
/// "again").
const AGAIN: Pat = Pat::Any(&[
    Pat::Seq(&[Pat::Word(&["ever"]), Pat::Word(&["again"])]),
    Pat::Word(&["again", "anymore", "ever"]),
    Pat::Seq(&[Pat::Word(&["any", "no"]), Pat::Word(&["more"])]),
]);

/// The phrases, tried in this order at each word.
const RULES: &[Rule] = &[
    // stop (calling and) texting (and calling) me (these texts)
    Rule {
        pattern: Pat::Seq(&[
            STOP,
            Pat::Opt(&OTHER_THEN),
            SMS_ING,
            Pat::Opt(&AND_OTHER),
            ME,
            Pat::Opt(&SENT_OBJECT),
        ]),
        position: Position::Anywhere,
    },
    // stop texting, stop sending these texts: without "me" only as a request.
    Rule {
        pattern: Pat::Seq(&[
            STOP,
            Pat::Opt(&OTHER_THEN),
            SMS_ING,
            Pat::Opt(&AND_OTHER),
            Pat::Opt(&SENT_OBJECT),
        ]),
        position: Position::Request,
    },
    // stop text me, stop send me texts
    Rule {
        pattern: Pat::Seq(&[
            STOP,
            Pat::Any(&[SMS_VERB, Pat::Word(&["send"])]),
            ME,
            Pat::Opt(&SENT_OBJECT),
        ]),
        position: Position::Anywhere,
    },
    // stop receiving these texts
    Rule {
        pattern: Pat::Seq(&[
            STOP,
            Pat::Word(&["receiving", "recieving", "getting"]),
            SENT_OBJECT,
        ]),
        position: Position::Anywhere,
    },
    // stop (all) (these) texts
    Rule {
        pattern: Pat::Seq(&[
            STOP,
            Pat::Opt(&Pat::Word(&["all", "any"])),
            Pat::Opt(&Pat::Word(&["of"])),
            Pat::Opt(&DETERMINER),
            MSG_NOUN,
        ]),
        position: Position::Anywhere,
    },
    // unsubscribe (me) (from your list)
    Rule {
        pattern: Pat::Seq(&[
            Pat::Word(&["unsubscribe", "unsub", "unsubcribe", "unsuscribe"]),
            Pat::Opt(&ME),
            Pat::Opt(&FROM_LIST),
        ]),
        position: Position::Anywhere,
    },
    // remove me (from your list)
    Rule {
        pattern: Pat::Seq(&[
            Pat::Word(&["remove", "delete", "erase"]),
            ME,
            Pat::Opt(&FROM_LIST),
        ]),
        position: Position::Anywhere,
    },
    // take me off your list
    Rule {
        pattern: Pat::Seq(&[
            Pat::Word(&["take", "get"]),
            ME,
            Pat::Word(&["off"]),
            Pat::Opt(&Pat::Word(&["of"])),
            LIST_OBJECT,
        ]),
        position: Position::Anywhere,
    },
    // opt me out, opt out (of these texts)
    Rule {
        pattern: Pat::Seq(&[
            Pat::Any(&[
                Pat::Seq(&[Pat::Word(&["opt"]), ME, Pat::Word(&["out"])]),
                Pat::Seq(&[Pat::Word(&["opt"]), Pat::Word(&["out"])]),
                Pat::Word(&["opt-out", "optout"]),
            ]),
            Pat::Opt(&Pat::Seq(&[Pat::Word(&["of", "from"]), LIST_OBJECT])),
        ]),
        position: Position::Anywhere,
    },
    // leave me alone
    Rule {
        pattern: Pat::Seq(&[
            Pat::Word(&["leave"]),
            Pat::Word(&["me", "us"]),
            Pat::Word(&["alone"]),
        ]),
        position: Position::Anywhere,
    },
    // no more texts, no more texting me
    Rule {
        pattern: Pat::Seq(&[
            Pat::Word(&["no"]),
            Pat::Word(&["more"]),
            Pat::Any(&[Pat::Seq(&[SMS_ING, Pat::Opt(&ME)]), SENT_NOUN]),
        ]),
        position: Position::Order,
    },
    // don't text me again
    Rule {
        pattern: Pat::Seq(&[DONT, Pat::Opt(&EVER), SMS_VERB, ME, AGAIN]),
        position: Position::Order,
    },
    // don't ever text me
    Rule {
        pattern: Pat::Seq(&[DONT, EVER, SMS_VERB, ME]),
        position: Position::Order,
    },
    // don't send me (any more) texts
    Rule {
        pattern: Pat::Seq(&[DONT, Pat::Opt(&EVER), Pat::Word(&["send"]), ME, SENT_OBJECT]),
        position: Position::Order,
    },
    // never (ever) text me again
    Rule {
        pattern: Pat::Seq(&[
            Pat::Word(&["never"]),
            Pat::Opt(&EVER),
            SMS_VERB,
            ME,
            Pat::Word(&["again"]),
        ]),
        position: Position::Order,
    },
    // I don't want (any more) texts, I do not wish to receive texts, I don't want to be contacted
    Rule {
        pattern: Pat::Seq(&[
            Pat::Opt(&Pat::Word(&["i", "we"])),
            Pat::Opt(&Pat::Word(&["really", "just", "honestly"])),
            DONT,
            Pat::Opt(&Pat::Word(&["really"])),
            Pat::Word(&["want", "wish", "need"]),
            Pat::Any(&[
                Pat::Seq(&[
                    Pat::Word(&["to"]),
                    Pat::Word(&["receive", "recieve", "get"]),
                    SENT_OBJECT,
                ]),
                Pat::Seq(&[
                    Pat::Word(&["to"]),
                    Pat::Word(&["be"]),
                    Pat::Word(&["texted", "messaged", "contacted", "spammed"]),
                ]),
                SENT_OBJECT,
            ]),
        ]),
        position: Position::Order,
    },
];

/// What may follow a phrase in its clause: politeness, emphasis, and where the messages go.
#[rustfmt::skip]
const TAIL_ITEM: Pat = Pat::Any(&[
    Pat::Word(&[
        "please", "pls", "plz", "plse", "pleas", "plez", "now", "already", "anymore", "again",
        "ever", "forever", "thanks", "thx", "ty", "tks", "thankyou", "immediately", "asap",
        "altogether", "completely", "permanently", "entirely", "sir", "maam", "ma'am", "guys", "ok",
        "okay", "seriously", "stop", "too",
    ]),
    Pat::Seq(&[Pat::Word(&["thank"]), Pat::Word(&["you", "u"])]),
    Pat::Seq(&[Pat::Word(&["at"]), Pat::Word(&["all"])]),
    Pat::Seq(&[Pat::Word(&["for"]), Pat::Word(&["good", "ever", "real"])]),
    Pat::Seq(&[Pat::Word(&["any", "no"]), Pat::Word(&["more"])]),
    Pat::Seq(&[Pat::Word(&["right"]), Pat::Word(&["now", "away"])]),
    Pat::Seq(&[Pat::Word(&["as"]), Pat::Word(&["well"])]),
    Pat::Seq(&[
        Pat::Word(&["once"]),
        Pat::Word(&["and"]),
        Pat::Word(&["for"]),
        Pat::Word(&["all"]),
    ]),
    Pat::Seq(&[Pat::Word(&["to"]), Pat::Word(&["me", "us"])]),
    Pat::Seq(&[
        Pat::Word(&["to", "on", "at", "from"]),
        Pat::Word(&["this", "my", "the", "your", "ur", "our"]),
        Pat::Opt(&Pat::Word(&["phone", "cell", "mobile"])),
        Pat::Word(&[
            "number", "phone", "cell", "mobile", "line", "device", "company", "business", "store",
            "list",
        ]),
    ]),
]);

/// The words of a whole-message opt-out.
const SHORT_CORE: Pat = Pat::Any(&[
    Pat::Seq(&[Pat::Word(&["stop"]), Pat::Word(&["all"])]),
    Pat::Seq(&[Pat::Word(&["opt"]), Pat::Word(&["out"])]),
    Pat::Word(&[
        "stop",
        "stopall",
        "unsubscribe",
        "unsub",
        "optout",
        "opt-out",
    ]),
]);

/// What may stand around them ("please stop", "stop now thank you").
#[rustfmt::skip]
const SHORT_FILLER: Pat = Pat::Any(&[
    Pat::Word(&[
        "please", "pls", "plz", "plse", "pleas", "plez", "now", "thanks", "thx", "ty", "kindly",
        "just", "asap", "immediately", "already", "sir", "seriously",
    ]),
    Pat::Seq(&[Pat::Word(&["thank"]), Pat::Word(&["you", "u"])]),
]);

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages that opt out, with the phrase the ledger records.
    const POSITIVE: &[(&str, &str)] = &[
        ("please stop texting me", "stop texting me"),
        ("unsubscribe me", "unsubscribe me"),
        ("Please STOP texting me!!", "STOP texting me"),
        ("STOP TEXTING ME!!!", "STOP TEXTING ME"),
        (
            "Stop sending me these messages.",
            "Stop sending me these messages",
        ),
        ("please stop", "please stop"),
        ("Stop, please!", "Stop, please"),
        ("STOP STOP STOP", "STOP STOP STOP"),
        ("unsubscribe please", "unsubscribe please"),
        ("Remove me from your list", "Remove me from your list"),
        (
            "Please remove my number from your mailing list.",
            "remove my number from your mailing list",
        ),
        ("Take me off this list please", "Take me off this list"),
        (
            "Could you take my number off your list?",
            "take my number off your list",
        ),
        ("Opt me out.", "Opt me out"),
        (
            "I'd like to opt out of these texts.",
            "I'd like to opt out of these texts",
        ),
        ("No more texts!", "No more texts"),
        ("Please, no more messages", "no more messages"),
        ("Don't text me again", "Don't text me again"),
        ("Do not contact me anymore.", "Do not contact me anymore"),
        ("Please don't ever message me", "don't ever message me"),
        ("dont send me any more texts", "dont send me any more texts"),
        ("Never text me again", "Never text me again"),
        ("Leave me alone.", "Leave me alone"),
        ("just leave me alone already", "leave me alone"),
        ("I want to unsubscribe", "I want to unsubscribe"),
        (
            "I asked you to stop texting me",
            "I asked you to stop texting me",
        ),
        ("Can you please stop messaging me?", "stop messaging me"),
        ("Hi, could you unsubscribe me?", "unsubscribe me"),
        ("Stop all these texts", "Stop all these texts"),
        ("stop the messages, I'm not interested", "stop the messages"),
        (
            "I don\u{2019}t want any more messages",
            "I don\u{2019}t want any more messages",
        ),
        (
            "I do not wish to receive these texts anymore",
            "I do not wish to receive these texts",
        ),
        ("Who is this? Stop texting me.", "Stop texting me"),
        ("stop contacting me i never signed up", "stop contacting me"),
        ("No, please stop sending me texts", "stop sending me texts"),
        (
            "UNSUBSCRIBE ME FROM THIS LIST",
            "UNSUBSCRIBE ME FROM THIS LIST",
        ),
        ("Stop calling and texting me", "Stop calling and texting me"),
        ("pls stop txting me", "stop txting me"),
        ("Stop texting this number", "Stop texting this number"),
        ("Stop texting me or I will report you", "Stop texting me"),
        ("stop spamming me", "stop spamming me"),
        ("Please stop sending", "stop sending"),
        (
            "I want to stop getting these texts",
            "I want to stop getting these texts",
        ),
        (
            "I didn't sign up for this, stop texting me",
            "stop texting me",
        ),
        (
            "Stop sending texts to my number please",
            "Stop sending texts",
        ),
        ("'Stop texting me'", "Stop texting me"),
        ("Opt-out", "Opt-out"),
        ("don't text me ever again", "don't text me ever again"),
        ("You need to stop texting me", "You need to stop texting me"),
        ("stop texting me this is harassment", "stop texting me"),
        ("stop now thank you", "stop now thank you"),
    ];

    /// Messages that do not opt out, or not clearly enough.
    #[rustfmt::skip]
    const NEGATIVE: &[&str] = &[
        "don't stop", "Don't stop texting me!", "DO NOT STOP", "never stop",
        "Never, ever stop texting me", "Please don\u{2019}t stop texting me",
        "I can't stop laughing", "They won't stop texting me", "stop by our store tomorrow",
        "Meet me at the bus stop", "non-stop fun!", "Stop the price increase",
        "How do I stop my order?", "I didn't unsubscribe", "Why did you stop texting me?",
        "why did you stop texting me", "Did you stop texting me",
        "If you stop texting me I will be sad", "Stop texting me?", "Reply STOP to unsubscribe",
        "Txt STOP to opt out", "To opt out, reply STOP", "Please don't unsubscribe me",
        "Don't remove me from your list", "I would never unsubscribe", "Stop texting me so early",
        "Stop texting me until Monday", "stop texting me lol", "Stop texting me, just kidding",
        "Stop sending me the wrong size!", "Please stop sending the invoice to my old address",
        "Please stop sending this invoice to my old address", "The unsubscribe link doesn't work",
        "How do I unsubscribe?", "I was going to unsubscribe but your deals are great",
        "Keep texting me", "I stopped by yesterday", "Can you stop the payment?",
        "Could you stop by at 5?", "Stop. Texting me is fine", "Don't leave me alone",
        "you don't text me anymore", "I'll stop texting now", "I need to stop texting so much",
        "Don't text me, I'm driving", "I don't want these texts to stop", "Remove me? No way",
        "Take me to the bus stop", "I want to stop smoking", "stop texting my wife",
        "Stop making me laugh", "No more? That's it?", "unsubscribe? no thanks", "stop?",
        "Maybe I should unsubscribe", "", "   ", "!!! ???",
    ];

    #[test]
    fn opt_outs_in_words_are_recognised() {
        for &(text, phrase) in POSITIVE {
            assert_eq!(detect_optout(text).as_deref(), Some(phrase), "{text:?}");
        }
        assert!(POSITIVE.len() >= 25);
    }

    #[test]
    fn negations_questions_and_other_meanings_are_not_opt_outs() {
        for &text in NEGATIVE {
            assert_eq!(detect_optout(text), None, "{text:?}");
        }
        assert!(NEGATIVE.len() >= 25);
    }

    #[test]
    fn the_phrase_keeps_the_original_casing_and_apostrophes() {
        assert_eq!(
            detect_optout("DON\u{2019}T TeXt Me AgAiN!!!").as_deref(),
            Some("DON\u{2019}T TeXt Me AgAiN")
        );
        assert_eq!(
            detect_optout("i\u{2019}d like to UNSUBSCRIBE").as_deref(),
            Some("i\u{2019}d like to UNSUBSCRIBE")
        );
    }

    #[test]
    fn a_phrase_never_spans_a_clause() {
        assert_eq!(detect_optout("stop, texting me is fine"), None);
        assert_eq!(detect_optout("stop\ntexting me"), None);
    }

    #[test]
    fn long_messages_are_not_examined() {
        let long = format!("{} please stop texting me", "word ".repeat(MAX_WORDS));
        assert_eq!(detect_optout(&long), None);
        let short = format!("{} please stop texting me", "word ".repeat(MAX_WORDS - 10));
        assert_eq!(detect_optout(&short).as_deref(), Some("stop texting me"));
    }

    #[test]
    fn non_ascii_words_match_nothing() {
        assert_eq!(detect_optout("stöp texting me"), None);
        assert_eq!(detect_optout("ＳＴＯＰ"), None);
        assert_eq!(
            detect_optout("Bitte — stop texting me").as_deref(),
            Some("stop texting me")
        );
    }

    #[test]
    fn random_text_never_panics() {
        #[rustfmt::skip]
        const VOCABULARY: &[&str] = &[
            "stop", "texting", "me", "please", "don't", "unsubscribe", "to", "want", "I", "no",
            "more", "texts", "opt", "out", "you", "can", "remove", "from", "list", "off", "?", ",",
            ".", "\u{2019}", "-", "\n",
        ];
        let mut rng = fastrand::Rng::with_seed(0x0b7_0a7);
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..rng.usize(0..80) {
                match rng.u8(0..4) {
                    0 => text.push(rng.char(..)),
                    1 => text.push(' '),
                    _ => text.push_str(VOCABULARY[rng.usize(0..VOCABULARY.len())]),
                }
            }
            if let Some(phrase) = detect_optout(&text) {
                assert!(!phrase.is_empty() && text.contains(&phrase), "{text:?}");
            }
        }
    }
}
