//! Keyword normalisation and the word-level keyword index.
//!
//! A message is routed by its first word(s). Both sides of that comparison go through the same
//! normalisation: the keywords an operator configures ([`keyword_words`]) and the text people send
//! ([`normalize`]). The index ([`KeywordIndex`]) is a word-level trie per number, built once per
//! config and then only read, so the router can share it as an immutable snapshot without locks.
//!
//! Normalisation rules (the contract `vmnd check`, `vmnd route` and the router rely on):
//! - Words are separated by Unicode whitespace and by the list separators `,` `;` `:` (and their
//!   Arabic, CJK and full-width forms, see [`is_separator`]). So `join,summer` is two words, like
//!   `JOIN, summer`: phones and people write both. Other punctuation inside a word stays part of it
//!   (`e-mail`, `don't`, `a.b` are one word each).
//! - Each word is trimmed of what is not a letter, digit or combining mark at its edges: `JOIN!`,
//!   `¡join`, `#JOIN`, `"join"` are all `join`. A word without any letter or digit (`!!!`, `-`, an
//!   emoji) is dropped, so it neither matches nor separates keywords.
//! - What is left is compared caselessly and compatibly: Unicode full case folding (`Straße` ==
//!   `STRASSE`, `ПОДПИСКА` == `подписка`), compatibility normalisation (full-width `ＪＯＩＮ` ==
//!   `join`, which CJK keyboards produce), canonical equivalence (a precomposed and a decomposed
//!   `ड़` are the same word), and invisible format characters (zero-width joiners, bidi marks,
//!   variation selectors) ignored. This is the Unicode "compatibility caseless match" of each word.
//! - A script written without spaces (Chinese, Japanese, Thai) is one word up to the next blank or
//!   separator: a keyword there matches the whole first run of text.

use std::collections::HashMap;
use std::ops::Range;

use caseless::Caseless;
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Longest keyword or alias, in characters as written (trimmed of blanks).
pub const MAX_KEYWORD_CHARS: usize = 30;
/// Most words in one keyword or alias ("STOP ALL" is two).
pub const MAX_KEYWORD_WORDS: usize = 5;

/// A message's text split into normalised words, remembering where each word was in the original.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized<'a> {
    /// The text as received: `args` are cut from it so they keep their casing and spacing.
    original: &'a str,
    /// The normalised words, in order; what the index compares.
    words: Vec<String>,
    /// Byte range in `original` of each word, trimmed of its edge punctuation.
    spans: Vec<Range<usize>>,
}

/// Normalises a message's text for matching (see the module docs for the rules).
///
/// `"  Join,   Summer!! "` gives `["join", "summer"]`; a text with no letter or digit gives no
/// words at all.
pub fn normalize(text: &str) -> Normalized<'_> {
    normalize_prefix(text, usize::MAX)
}

/// Like [`normalize`], but stops after `max_words` words.
///
/// The hot path only ever compares the first [`MAX_KEYWORD_WORDS`] words, and a concatenated
/// message can be several kilobytes long: this keeps the cost of routing it independent of its
/// length. [`Normalized::args_after`] still cuts from the full original text.
pub fn normalize_prefix(text: &str, max_words: usize) -> Normalized<'_> {
    let mut words = Vec::new();
    let mut spans = Vec::new();
    let mut rest = 0;
    while words.len() < max_words {
        let Some(token) = next_token(text, rest) else {
            break;
        };
        rest = token.end;
        if let Some(span) = trim_word(text, token) {
            words.push(fold_word(&text[span.clone()]));
            spans.push(span);
        }
    }
    Normalized {
        original: text,
        words,
        spans,
    }
}

impl<'a> Normalized<'a> {
    /// The normalised words, in order.
    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// The text this was made from.
    pub fn original(&self) -> &'a str {
        self.original
    }

    /// Where each word is in [`original`](Self::original) (byte ranges, edge punctuation excluded).
    pub fn spans(&self) -> &[Range<usize>] {
        &self.spans
    }

    /// The original text after the first `n` words: the message's `args`.
    ///
    /// Cut from the original, so casing and inner spacing are kept (`"JOIN  Summer  Sale"`, n = 1,
    /// gives `"Summer  Sale"`). Trimmed of blanks and of the punctuation and separators directly
    /// after the keyword (`"JOIN, summer"` and `"JOIN!summer"`... gives `"summer"`), but not of
    /// punctuation that belongs to what follows (`"JOIN #5"` gives `"#5"`). `None` when nothing is
    /// left, or when there are fewer than `n` words. With `n == 0` it is the whole text, trimmed.
    pub fn args_after(&self, n: usize) -> Option<&'a str> {
        let rest = if n == 0 {
            self.original
        } else {
            let end = self.spans.get(n - 1)?.end;
            let rest = &self.original[end..];
            // Punctuation glued to the keyword ("JOIN!!", "JOIN,"): up to the next blank.
            let glued = rest
                .find(|c: char| c.is_whitespace() || is_separator(c))
                .unwrap_or(rest.len());
            rest[glued..].trim_start_matches(|c: char| c.is_whitespace() || is_separator(c))
        };
        let args = rest.trim();
        (!args.is_empty()).then_some(args)
    }
}

/// A keyword or alias as configured, as normalised words.
///
/// Errors, worded for `vmnd check`: empty; without any letter or digit; longer than
/// [`MAX_KEYWORD_CHARS`] characters as written (blanks around it do not count); more than
/// [`MAX_KEYWORD_WORDS`] words.
pub fn keyword_words(keyword: &str) -> Result<Vec<String>, String> {
    let trimmed = keyword.trim();
    if trimmed.is_empty() {
        return Err("keyword is empty".to_string());
    }
    let chars = trimmed.chars().count();
    if chars > MAX_KEYWORD_CHARS {
        return Err(format!(
            "keyword {trimmed:?} is {chars} characters long; at most {MAX_KEYWORD_CHARS} are allowed"
        ));
    }
    let words = normalize(trimmed).words;
    if words.is_empty() {
        return Err(format!(
            "keyword {trimmed:?} has no letter or digit; punctuation and symbols are ignored when matching"
        ));
    }
    if words.len() > MAX_KEYWORD_WORDS {
        return Err(format!(
            "keyword {trimmed:?} has {} words; at most {MAX_KEYWORD_WORDS} are allowed",
            words.len()
        ));
    }
    Ok(words)
}

/// Separators that split words like a blank does: commas, semicolons and colons, in the forms
/// phones send them (ASCII, full-width, CJK ideographic, Arabic, small forms).
pub fn is_separator(c: char) -> bool {
    matches!(
        c,
        ',' | ';'
            | ':'
            | '\u{060C}' // ARABIC COMMA
            | '\u{061B}' // ARABIC SEMICOLON
            | '\u{200B}' // ZERO WIDTH SPACE: a word break in Thai and Khmer, not White_Space
            | '\u{3001}' // IDEOGRAPHIC COMMA
            | '\u{FE50}' // SMALL COMMA
            | '\u{FE51}' // SMALL IDEOGRAPHIC COMMA
            | '\u{FE54}' // SMALL SEMICOLON
            | '\u{FE55}' // SMALL COLON
            | '\u{FF0C}' // FULLWIDTH COMMA
            | '\u{FF1A}' // FULLWIDTH COLON
            | '\u{FF1B}' // FULLWIDTH SEMICOLON
    )
}

/// The next run of text from byte `from` that is neither blank nor a separator, as a byte range.
fn next_token(text: &str, from: usize) -> Option<Range<usize>> {
    let rest = &text[from..];
    let start = from + rest.find(|c: char| !(c.is_whitespace() || is_separator(c)))?;
    let len = text[start..]
        .find(|c: char| c.is_whitespace() || is_separator(c))
        .unwrap_or(text.len() - start);
    Some(start..start + len)
}

/// The part of `token` from its first letter or digit to its last one, plus the combining marks
/// that follow it (a Devanagari word can end in a vowel sign or virama, which are marks, not
/// letters). `None` if the token has no letter or digit.
fn trim_word(text: &str, token: Range<usize>) -> Option<Range<usize>> {
    let word = &text[token.clone()];
    let start = word.find(char::is_alphanumeric)?;
    let (last, c) = word
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_alphanumeric())?;
    let mut end = last + c.len_utf8();
    end += word[end..]
        .find(|c: char| !is_combining_mark(c))
        .unwrap_or(word.len() - end);
    Some(token.start + start..token.start + end)
}

/// Characters invisible in rendering that phones and keyboards insert unpredictably (joiners in
/// Indic scripts, bidi marks in Arabic and Hebrew, emoji variation selectors, soft hyphens,
/// byte-order marks): a word is the same word with or without them.
fn is_ignorable(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200C}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{E0100}'..='\u{E01EF}'
    )
}

/// One word's matching key: the Unicode compatibility caseless form
/// (NFKD(fold(NFKD(fold(NFD(w)))))), recomposed to NFC so keys stay short (NFC is one-to-one on
/// decomposed text, so it changes no comparison).
fn fold_word(word: &str) -> String {
    // Most SMS keywords are ASCII: there the full pipeline is plain lowercasing, so skip its
    // iterator chain (a few hundred nanoseconds per word).
    if word.is_ascii() {
        return word.to_ascii_lowercase();
    }
    fold_full(word)
}

/// [`fold_word`] without the ASCII shortcut.
fn fold_full(word: &str) -> String {
    let mut key = fold_chars(word);
    // A few compatibility characters decompose into text with blanks, separators or edge
    // punctuation ("¨" is a space and a combining diaeresis, "⒈" is "1."). Clean those out and
    // fold again, so a key is itself a normalised word: one with no blank inside, which
    // normalises to itself and prints sensibly in `vmnd route`. Twice is enough in practice; the
    // bound only guards against a pathological loop.
    for _ in 0..3 {
        let cleaned: String = match trim_word(&key, 0..key.len()) {
            Some(span) => key[span]
                .chars()
                .filter(|&c| !(c.is_whitespace() || is_separator(c)))
                .collect(),
            None => break,
        };
        if cleaned == key {
            break;
        }
        key = fold_chars(&cleaned);
    }
    key
}

fn fold_chars(word: &str) -> String {
    word.chars()
        .filter(|&c| !is_ignorable(c))
        .nfd()
        .default_case_fold()
        .nfkd()
        .default_case_fold()
        .nfkd()
        .nfc()
        .collect()
}

/// Identifies one keyword rule; the router maps it back to its campaign. Aliases of a keyword
/// share its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(pub u32);

/// A trie node while building: children kept unsorted, sorted once in [`KeywordIndexBuilder::build`].
#[derive(Default)]
struct BuildNode {
    children: Vec<(u32, u32)>,
    rule: Option<RuleId>,
}

/// Collects phrases, then builds an immutable [`KeywordIndex`].
#[derive(Default)]
pub struct KeywordIndexBuilder {
    /// Every distinct word of every phrase, interned once for all numbers (campaign words repeat
    /// across numbers: "join", "stop", "win"), so a trie edge is a 4-byte id, not a string.
    words: HashMap<Box<str>, u32>,
    /// Root node of each number's trie.
    roots: HashMap<Box<str>, u32>,
    nodes: Vec<BuildNode>,
    phrases: usize,
}

impl KeywordIndexBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a phrase (normalised words, as [`keyword_words`] returns them) for a number.
    ///
    /// `Err(existing)` if that exact phrase is already there for the number; the index keeps the
    /// first. An empty phrase matches nothing and is ignored ([`keyword_words`] never returns one).
    pub fn insert(&mut self, vmn: &str, words: &[String], rule: RuleId) -> Result<(), RuleId> {
        if words.is_empty() {
            debug_assert!(false, "empty keyword phrase for {vmn}");
            return Ok(());
        }
        let mut node = match self.roots.get(vmn) {
            Some(&root) => root,
            None => {
                let root = self.new_node();
                self.roots.insert(vmn.into(), root);
                root
            }
        };
        for word in words {
            let next_id = self.words.len() as u32;
            let word = *self.words.entry(word.as_str().into()).or_insert(next_id);
            let found = self.nodes[node as usize]
                .children
                .iter()
                .find(|&&(w, _)| w == word)
                .map(|&(_, child)| child);
            node = match found {
                Some(child) => child,
                None => {
                    let child = self.new_node();
                    self.nodes[node as usize].children.push((word, child));
                    child
                }
            };
        }
        let slot = &mut self.nodes[node as usize].rule;
        if let Some(existing) = *slot {
            return Err(existing);
        }
        *slot = Some(rule);
        self.phrases += 1;
        Ok(())
    }

    fn new_node(&mut self) -> u32 {
        let id = u32::try_from(self.nodes.len()).expect("fewer than 4 billion trie nodes");
        self.nodes.push(BuildNode::default());
        id
    }

    /// Freezes the tries into one compact, read-only index.
    pub fn build(mut self) -> KeywordIndex {
        // Lay the nodes out again breadth-first per number, children sorted by word id, in flat
        // arrays (compressed sparse rows): a lookup touches a few contiguous cache lines and
        // binary-searches a node's edge words without touching its child ids.
        let n = self.nodes.len();
        let mut child_start = Vec::with_capacity(n + 1);
        let mut edge_words = Vec::with_capacity(n.saturating_sub(self.roots.len()));
        let mut edge_nodes = Vec::with_capacity(n.saturating_sub(self.roots.len()));
        let mut rules = Vec::with_capacity(n);
        let mut roots = HashMap::with_capacity(self.roots.len());
        let mut queue: Vec<u32> = Vec::with_capacity(n);
        for (vmn, old_root) in std::mem::take(&mut self.roots) {
            let first = queue.len();
            roots.insert(vmn, first as u32);
            queue.push(old_root);
            let mut next = first;
            while next < queue.len() {
                let old = queue[next] as usize;
                next += 1;
                let node = &mut self.nodes[old];
                node.children.sort_unstable();
                child_start.push(edge_words.len() as u32);
                rules.push(node.rule);
                for &(word, child) in &node.children {
                    edge_words.push(word);
                    // The child's new id is its position in the queue.
                    edge_nodes.push(queue.len() as u32);
                    queue.push(child);
                }
            }
        }
        child_start.push(edge_words.len() as u32);
        let max_word_len = self.words.keys().map(|w| w.len()).max().unwrap_or(0);
        let mut words = self.words;
        words.shrink_to_fit();
        KeywordIndex {
            words,
            max_word_len,
            roots,
            child_start,
            edge_words,
            edge_nodes,
            rules,
            phrases: self.phrases,
        }
    }
}

/// Every number's keyword phrases, for matching a message's first words. Immutable: built once
/// per config (or keyword change), published as a snapshot, read without locks.
#[derive(Debug, Default)]
pub struct KeywordIndex {
    /// Word -> id, shared by all numbers. A message word missing here matches nothing anywhere.
    words: HashMap<Box<str>, u32>,
    /// Longest interned word in bytes: a longer message word cannot match, so it is not hashed.
    max_word_len: usize,
    /// Number -> its root node.
    roots: HashMap<Box<str>, u32>,
    /// Node i's edges are `child_start[i]..child_start[i + 1]` in `edge_words` / `edge_nodes`.
    child_start: Vec<u32>,
    /// Edge labels (word ids), sorted within each node for binary search.
    edge_words: Vec<u32>,
    /// Edge targets, parallel to `edge_words`.
    edge_nodes: Vec<u32>,
    /// The phrase ending at node i, if any.
    rules: Vec<Option<RuleId>>,
    phrases: usize,
}

impl KeywordIndex {
    /// Follows `words` down `vmn`'s trie, calling `found` for every phrase passed, shortest first.
    fn walk(&self, vmn: &str, words: &[String], mut found: impl FnMut(RuleId, usize)) {
        let Some(&root) = self.roots.get(vmn) else {
            return;
        };
        let mut node = root as usize;
        for (depth, word) in words.iter().enumerate() {
            let (start, end) = (
                self.child_start[node] as usize,
                self.child_start[node + 1] as usize,
            );
            // A leaf has nowhere to go: no need to hash the word.
            if start == end || word.len() > self.max_word_len {
                return;
            }
            let Some(&id) = self.words.get(word.as_str()) else {
                return;
            };
            let Ok(i) = self.edge_words[start..end].binary_search(&id) else {
                return;
            };
            node = self.edge_nodes[start + i] as usize;
            if let Some(rule) = self.rules[node] {
                found(rule, depth + 1);
            }
        }
    }

    /// Every phrase of `vmn` that is a prefix (by whole words) of `words`, longest first, as
    /// (rule, words matched). The first is the match (the longest wins); the others are the
    /// candidates "shorter than a longer match" that explanations list.
    pub fn matches(&self, vmn: &str, words: &[String]) -> Vec<(RuleId, usize)> {
        let mut all = Vec::new();
        self.walk(vmn, words, |rule, n| all.push((rule, n)));
        all.reverse();
        all
    }

    /// Only the longest match, without allocating: the hot path.
    pub fn longest(&self, vmn: &str, words: &[String]) -> Option<(RuleId, usize)> {
        let mut best = None;
        self.walk(vmn, words, |rule, n| best = Some((rule, n)));
        best
    }

    /// Number of phrases (keywords plus aliases) over all numbers.
    pub fn len(&self) -> usize {
        self.phrases
    }

    /// True when no phrase was added.
    pub fn is_empty(&self) -> bool {
        self.phrases == 0
    }

    /// Pairs of phrases of `vmn` where the first is a strict prefix of the second, as (shorter
    /// rule, longer rule), sorted; `vmn check` warns about each. A rule whose alias is a prefix of
    /// its own keyword pairs with itself.
    pub fn prefix_pairs(&self, vmn: &str) -> Vec<(RuleId, RuleId)> {
        let mut pairs = Vec::new();
        let Some(&root) = self.roots.get(vmn) else {
            return pairs;
        };
        // Depth-first with the rules on the path so far; phrases are at most a few words deep.
        let mut ancestors: Vec<RuleId> = Vec::new();
        let mut stack: Vec<(usize, usize)> = vec![(root as usize, 0)];
        while let Some((node, depth)) = stack.pop() {
            // `depth` counts the rules above this node; drop those of a finished sibling branch.
            ancestors.truncate(depth);
            let mut depth = depth;
            if let Some(rule) = self.rules[node] {
                pairs.extend(ancestors.iter().map(|&shorter| (shorter, rule)));
                ancestors.push(rule);
                depth += 1;
            }
            let (start, end) = (
                self.child_start[node] as usize,
                self.child_start[node + 1] as usize,
            );
            stack.extend(
                self.edge_nodes[start..end]
                    .iter()
                    .map(|&c| (c as usize, depth)),
            );
        }
        pairs.sort_unstable();
        pairs
    }

    /// Numbers with at least one phrase.
    pub fn numbers(&self) -> impl Iterator<Item = &str> {
        self.roots.keys().map(|k| &**k)
    }

    /// An estimate of the heap memory the index holds, in bytes (table capacities, control bytes
    /// of the hash maps and the interned strings), for benchmarks and metrics.
    pub fn heap_bytes(&self) -> usize {
        fn map_bytes(map: &HashMap<Box<str>, u32>) -> usize {
            // hashbrown: one slot of (key, value) plus one control byte per bucket.
            let slot = size_of::<(Box<str>, u32)>() + 1;
            let buckets = (map.capacity() * 8 / 7).next_power_of_two();
            buckets * slot + map.keys().map(|k| k.len()).sum::<usize>()
        }
        map_bytes(&self.words)
            + map_bytes(&self.roots)
            + self.child_start.capacity() * size_of::<u32>()
            + self.edge_words.capacity() * size_of::<u32>()
            + self.edge_nodes.capacity() * size_of::<u32>()
            + self.rules.capacity() * size_of::<Option<RuleId>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        normalize(text).words().to_vec()
    }

    fn kw(keyword: &str) -> Vec<String> {
        keyword_words(keyword).unwrap()
    }

    #[test]
    fn normalize_table() {
        let table: &[(&str, &[&str])] = &[
            // case
            ("join", &["join"]),
            ("JOIN", &["join"]),
            ("JoIn", &["join"]),
            // punctuation at the edges of the message and of each word
            ("JOIN!", &["join"]),
            ("¡join", &["join"]),
            ("#VOTE", &["vote"]),
            ("\"join\"", &["join"]),
            ("(JOIN)...", &["join"]),
            ("JOIN ! summer", &["join", "summer"]),
            // separators split words like blanks
            ("join,summer", &["join", "summer"]),
            ("VOTE:A", &["vote", "a"]),
            ("join;club", &["join", "club"]),
            ("加入，夏天", &["加入", "夏天"]),
            // other inner punctuation stays inside the word
            ("e-mail don't a.b", &["e-mail", "don't", "a.b"]),
            ("JOIN!!SUMMER", &["join!!summer"]),
            // blanks: leading, trailing, repeated, tabs, newlines, no-break and ideographic spaces
            ("  Join,   Summer!! ", &["join", "summer"]),
            (
                "\tJOIN\r\n\nCLUB\u{00A0}now\u{3000}x",
                &["join", "club", "now", "x"],
            ),
            // words without letters or digits are dropped
            ("!!! 👍 -- JOIN", &["join"]),
            ("JOIN👍", &["join"]),
            ("VOTE #1", &["vote", "1"]),
            // nothing at all
            ("", &[]),
            ("   ", &[]),
            ("?!... 🎉", &[]),
            // non-Latin scripts
            ("ПОДПИСКА", &["подписка"]),
            ("Подписка!", &["подписка"]),
            ("Straße", &["strasse"]),
            ("STRASSE", &["strasse"]),
            ("ΟΔΟΣ", &["οδοσ"]),
            ("οδος", &["οδοσ"]),
            ("जुड़ें", &["जुड़ें"]),
            ("जुड़ें अभी", &["जुड़ें", "अभी"]),
            ("اشترك الآن", &["اشترك", "الآن"]),
            ("加入俱乐部", &["加入俱乐部"]),
            // compatibility forms and invisible characters
            ("ＪＯＩＮ", &["join"]),
            ("ﬁnd", &["find"]),
            ("jo\u{200D}in\u{FE0F}", &["join"]),
            ("\u{200F}اشترك\u{200F}", &["اشترك"]),
        ];
        for (text, expected) in table {
            assert_eq!(words(text), *expected, "normalize({text:?})");
        }
    }

    #[test]
    fn canonically_equivalent_words_are_equal() {
        // DEVANAGARI LETTER DDDHA (precomposed) vs DDA + NUKTA, as keyboards type it.
        assert_eq!(words("\u{095C}"), words("\u{0921}\u{093C}"));
        // é precomposed vs e + combining acute, and in upper case.
        assert_eq!(words("caf\u{E9}"), words("CAFE\u{301}"));
    }

    #[test]
    fn word_ending_in_combining_marks_keeps_them() {
        // Virama (U+094D) is a mark, not a letter: it must not be trimmed as punctuation.
        let n = normalize("क्!");
        assert_eq!(n.words(), ["क्"]);
        assert_eq!(&n.original()[n.spans()[0].clone()], "क्");
    }

    #[test]
    fn ascii_fast_path_agrees_with_the_full_pipeline() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let text: String = (0..rng.usize(1..24))
                .map(|_| rng.u8(0..128) as char)
                .collect();
            let n = normalize(&text);
            for (word, span) in n.words().iter().zip(n.spans()) {
                assert_eq!(*word, fold_full(&text[span.clone()]), "{text:?}");
            }
        }
    }

    #[test]
    fn args_table() {
        let table: &[(&str, usize, Option<&str>)] = &[
            ("JOIN  Summer  Sale", 1, Some("Summer  Sale")),
            ("join summer", 1, Some("summer")),
            ("JOIN, Summer Sale!", 1, Some("Summer Sale!")),
            ("JOIN,summer", 1, Some("summer")),
            ("JOIN!! summer", 1, Some("summer")),
            ("JOIN , summer", 1, Some("summer")),
            ("JOIN #5", 1, Some("#5")),
            ("  JOIN CLUB   gold member  ", 2, Some("gold member")),
            ("JOIN", 1, None),
            ("JOIN!!!  ", 1, None),
            ("JOIN", 2, None),
            ("  hello there ", 0, Some("hello there")),
            ("", 0, None),
            ("जुड़ें राहुल शर्मा", 1, Some("राहुल शर्मा")),
            ("ПОДПИСКА Москва", 1, Some("Москва")),
            ("JOIN 👍", 1, Some("👍")),
        ];
        for &(text, n, expected) in table {
            assert_eq!(
                normalize(text).args_after(n),
                expected,
                "{text:?} after {n}"
            );
        }
    }

    #[test]
    fn normalize_prefix_stops_early_and_keeps_args() {
        let n = normalize_prefix("a b c d e f g h", 3);
        assert_eq!(n.words(), ["a", "b", "c"]);
        assert_eq!(n.args_after(2), Some("c d e f g h"));
        assert_eq!(n.args_after(3), Some("d e f g h"));
    }

    #[test]
    fn keyword_words_accepts_and_normalises() {
        assert_eq!(kw("JOIN"), ["join"]);
        assert_eq!(kw("  Join Club "), ["join", "club"]);
        assert_eq!(kw("STOP ALL"), ["stop", "all"]);
        assert_eq!(kw("#VOTE!"), ["vote"]);
        assert_eq!(kw("जुड़ें"), ["जुड़ें"]);
        // 30 characters is the limit, blanks around it do not count.
        assert!(keyword_words(&format!("  {}  ", "A".repeat(30))).is_ok());
        // 30 characters, not bytes: 30 Devanagari letters are 90 bytes.
        assert!(keyword_words(&"क".repeat(30)).is_ok());
        assert_eq!(kw("A B C D E").len(), 5);
    }

    #[test]
    fn keyword_words_errors() {
        let too_long = keyword_words(&"A".repeat(31)).unwrap_err();
        assert!(too_long.contains("31 characters"), "{too_long}");
        assert!(keyword_words("").unwrap_err().contains("empty"));
        assert!(keyword_words("   ").unwrap_err().contains("empty"));
        let punct = keyword_words("!!!").unwrap_err();
        assert!(punct.contains("no letter or digit"), "{punct}");
        assert!(keyword_words("🎉").is_err());
        let many = keyword_words("A B C D E F").unwrap_err();
        assert!(many.contains("6 words"), "{many}");
    }

    /// One number with keywords, aliases and multi-word phrases, plus a second number.
    fn index() -> KeywordIndex {
        let mut b = KeywordIndexBuilder::new();
        let add = |b: &mut KeywordIndexBuilder, vmn: &str, k: &str, r: u32| {
            b.insert(vmn, &kw(k), RuleId(r)).unwrap()
        };
        add(&mut b, "56767", "JOIN", 1);
        add(&mut b, "56767", "SUBSCRIBE", 1); // alias of JOIN
        add(&mut b, "56767", "JOIN CLUB", 2);
        add(&mut b, "56767", "JOIN CLUB GOLD", 3);
        add(&mut b, "56767", "VOTE", 4);
        add(&mut b, "56767", "ПОДПИСКА", 5);
        add(&mut b, "56767", "जुड़ें", 6);
        add(&mut b, "56767", "Straße", 7);
        add(&mut b, "9876543210", "JOIN", 10);
        b.build()
    }

    #[test]
    fn matching_table() {
        let idx = index();
        let table: &[(&str, &str, Option<(u32, usize)>)] = &[
            ("56767", "join", Some((1, 1))),
            ("56767", "JOIN", Some((1, 1))),
            ("56767", "JoIn now", Some((1, 1))),
            ("56767", "  join!! ", Some((1, 1))),
            ("56767", "subscribe me", Some((1, 1))),
            ("56767", "JOIN CLUB", Some((2, 2))),
            ("56767", "join   club!", Some((2, 2))),
            ("56767", "join,club", Some((2, 2))),
            ("56767", "JOIN CLUB GOLD please", Some((3, 3))),
            ("56767", "JOIN CLUB SILVER", Some((2, 2))),
            ("56767", "JOIN CLUBS", Some((1, 1))),
            ("56767", "JOINCLUB", None),
            ("56767", "CLUB", None),
            ("56767", "vote A", Some((4, 1))),
            ("56767", "#VOTE", Some((4, 1))),
            ("56767", "подписка", Some((5, 1))),
            ("56767", "ПОДПИСКА сейчас", Some((5, 1))),
            ("56767", "जुड़ें", Some((6, 1))),
            ("56767", "STRASSE", Some((7, 1))),
            ("56767", "strasse 5", Some((7, 1))),
            ("56767", "hello", None),
            ("56767", "", None),
            ("56767", "?!", None),
            ("56767", "please join", None),
            ("9876543210", "join club", Some((10, 1))),
            // a number without keywords
            ("11111", "join", None),
        ];
        for &(vmn, text, expected) in table {
            let n = normalize(text);
            let got = idx.longest(vmn, n.words());
            assert_eq!(got, expected.map(|(r, w)| (RuleId(r), w)), "{vmn} {text:?}");
            assert_eq!(idx.matches(vmn, n.words()).first().copied(), got);
        }
    }

    #[test]
    fn matches_lists_longest_first() {
        let idx = index();
        let n = normalize("Join Club Gold member");
        assert_eq!(
            idx.matches("56767", n.words()),
            [(RuleId(3), 3), (RuleId(2), 2), (RuleId(1), 1)]
        );
        assert_eq!(n.args_after(3), Some("member"));
        assert!(idx.matches("56767", &[]).is_empty());
    }

    #[test]
    fn duplicate_phrase_is_refused_with_the_existing_rule() {
        let mut b = KeywordIndexBuilder::new();
        b.insert("56767", &kw("JOIN"), RuleId(1)).unwrap();
        assert_eq!(b.insert("56767", &kw("join!"), RuleId(2)), Err(RuleId(1)));
        assert_eq!(b.insert("56767", &kw("STRASSE"), RuleId(3)), Ok(()));
        assert_eq!(b.insert("56767", &kw("Straße"), RuleId(4)), Err(RuleId(3)));
        // The same phrase on another number is fine.
        assert_eq!(b.insert("56768", &kw("JOIN"), RuleId(5)), Ok(()));
        let idx = b.build();
        assert_eq!(idx.len(), 3);
        assert_eq!(idx.longest("56767", &kw("join")), Some((RuleId(1), 1)));
    }

    #[test]
    fn empty_index() {
        let idx = KeywordIndexBuilder::new().build();
        assert!(idx.is_empty());
        assert_eq!(idx.len(), 0);
        assert_eq!(idx.longest("56767", &kw("join")), None);
        assert!(idx.prefix_pairs("56767").is_empty());
        assert_eq!(KeywordIndex::default().longest("1", &kw("x")), None);
    }

    #[test]
    fn prefix_pairs_lists_every_shorter_longer_pair() {
        let idx = index();
        assert_eq!(
            idx.prefix_pairs("56767"),
            [
                (RuleId(1), RuleId(2)),
                (RuleId(1), RuleId(3)),
                (RuleId(2), RuleId(3)),
            ]
        );
        assert!(idx.prefix_pairs("9876543210").is_empty());
        assert!(idx.prefix_pairs("11111").is_empty());
    }

    #[test]
    fn index_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<KeywordIndex>();
        assert!(index().heap_bytes() > 0);
    }

    /// Random text from a mix of ASCII, blanks, separators, marks, invisible characters and
    /// several scripts, including characters whose case folding or decomposition expands.
    fn random_text(rng: &mut fastrand::Rng) -> String {
        const PIECES: &[char] = &[
            'a',
            'Z',
            '0',
            ' ',
            '\t',
            '\n',
            ',',
            ':',
            '!',
            '#',
            '\u{00A0}',
            '\u{3000}',
            '\u{200B}',
            '\u{200D}',
            '\u{FE0F}',
            '\u{0301}',
            '\u{094D}',
            'ß',
            'ẞ',
            'İ',
            'ŉ',
            'ΐ',
            'ﬃ',
            'Σ',
            'क',
            '\u{095C}',
            'ж',
            'Ж',
            'ع',
            '加',
            'Ｊ',
            '，',
            '👍',
            '\u{10400}',
        ];
        let len = rng.usize(0..40);
        (0..len)
            .map(|_| {
                if rng.bool() {
                    PIECES[rng.usize(..PIECES.len())]
                } else {
                    rng.char(..)
                }
            })
            .collect()
    }

    #[test]
    fn random_unicode_never_panics() {
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let mut b = KeywordIndexBuilder::new();
        for i in 0..300 {
            if let Ok(words) = keyword_words(&random_text(&mut rng)) {
                let _ = b.insert("1", &words, RuleId(i));
            }
        }
        let idx = b.build();
        for _ in 0..20_000 {
            let text = random_text(&mut rng);
            let n = normalize(&text);
            assert_eq!(n.words().len(), n.spans().len());
            for (word, span) in n.words().iter().zip(n.spans()) {
                assert!(!word.is_empty(), "{text:?}");
                assert!(!word.chars().any(char::is_whitespace), "{text:?}");
                // Normalising is idempotent: a word normalises to itself.
                assert_eq!(words(word), [word.clone()], "{text:?}");
                assert!(!text[span.clone()].is_empty());
            }
            for k in 0..=n.words().len() + 1 {
                if let Some(args) = n.args_after(k) {
                    assert!(!args.is_empty() && args.trim() == args, "{text:?} {k}");
                }
            }
            let _ = idx.matches("1", n.words());
            let _ = idx.longest("1", n.words());
        }
    }
}
