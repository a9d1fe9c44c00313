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
//! - Case folding is Unicode's default, not Turkish: `İ` folds to `i` + combining dot, so `İSTANBUL`
//!   and `istanbul` differ, as in every locale-independent comparison.
//!
//! Speed: ASCII text takes a byte-level path; other words whose characters neither decompose nor
//! compose (Cyrillic, Greek, Devanagari, Arabic, CJK...) a table-driven one (`fold_simple`);
//! only the rest (Latin letters with precomposed accents, `ß`, full-width forms...) goes through
//! the full normalisation pipeline, about a microsecond per word. Tests check both shortcuts
//! against the pipeline.

use std::collections::HashMap;
use std::ops::Range;

use caseless::Caseless;
use unicode_normalization::UnicodeNormalization;

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

/// The matching key of the first word of `text` (as [`normalize`] makes it), if it has one:
/// how a poll answer is compared with the poll's options, so that "ＶＯＴＥ Ａ" and "VOTE １"
/// vote like "VOTE A" and "VOTE 1", as keywords match.
pub fn first_word_key(text: &str) -> Option<String> {
    normalize_prefix(text, 1).words.into_iter().next()
}

/// Like [`normalize`], but stops after `max_words` words.
///
/// The hot path only ever compares the first [`MAX_KEYWORD_WORDS`] words, and a concatenated
/// message can be several kilobytes long: this keeps the cost of routing it independent of its
/// length. [`Normalized::args_after`] still cuts from the full original text.
pub fn normalize_prefix(text: &str, max_words: usize) -> Normalized<'_> {
    // Most SMS text is plain ASCII: one pass over its bytes does exactly what the general path
    // does (a test checks they agree), in a fraction of the time.
    if text.is_ascii() {
        normalize_ascii(text, max_words)
    } else {
        normalize_unicode(text, max_words)
    }
}

/// The general path of [`normalize_prefix`].
fn normalize_unicode(text: &str, max_words: usize) -> Normalized<'_> {
    // Sized for a keyword's worth of words up front: growing from empty reallocates twice.
    let mut words = Vec::with_capacity(max_words.min(8));
    let mut spans = Vec::with_capacity(max_words.min(8));
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

/// [`normalize_prefix`] for ASCII text. ASCII has no combining marks, no compatibility forms and
/// no invisible characters, and case folding is lowercasing: only the word boundaries remain.
fn normalize_ascii(text: &str, max_words: usize) -> Normalized<'_> {
    // Blanks (char::is_whitespace restricted to ASCII: \t \n \x0B \x0C \r and space) and the
    // ASCII separators.
    let is_break = |b: u8| matches!(b, b'\t'..=b'\r' | b' ' | b',' | b';' | b':');
    let bytes = text.as_bytes();
    // Sized for a keyword's worth of words up front: growing from empty reallocates twice.
    let mut words = Vec::with_capacity(max_words.min(8));
    let mut spans = Vec::with_capacity(max_words.min(8));
    let mut i = 0;
    while words.len() < max_words {
        // Everything up to the next letter or digit is blanks, separators, the edge punctuation
        // of a word or a word without letters and digits: all skipped alike.
        let Some(start) = bytes[i..].iter().position(u8::is_ascii_alphanumeric) else {
            break;
        };
        let start = i + start;
        let token_end = bytes[start..]
            .iter()
            .position(|&b| is_break(b))
            .map_or(bytes.len(), |n| start + n);
        // The token holds a letter or digit at `start`, so this finds one.
        let end = start
            + 1
            + bytes[start..token_end]
                .iter()
                .rposition(u8::is_ascii_alphanumeric)
                .unwrap_or(0);
        words.push(text[start..end].to_ascii_lowercase());
        spans.push(start..end);
        i = token_end;
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
            | '\u{037E}' // GREEK QUESTION MARK: canonically a semicolon (its NFC form is ';')
            | '\u{060C}' // ARABIC COMMA
            | '\u{061B}' // ARABIC SEMICOLON
            | '\u{200B}' // ZERO WIDTH SPACE: a word break in Thai and Khmer, not White_Space
            | '\u{3001}' // IDEOGRAPHIC COMMA
            | '\u{FE10}' // PRESENTATION FORM FOR VERTICAL COMMA
            | '\u{FE11}' // PRESENTATION FORM FOR VERTICAL IDEOGRAPHIC COMMA
            | '\u{FE13}' // PRESENTATION FORM FOR VERTICAL COLON
            | '\u{FE14}' // PRESENTATION FORM FOR VERTICAL SEMICOLON
            | '\u{FE50}' // SMALL COMMA
            | '\u{FE51}' // SMALL IDEOGRAPHIC COMMA
            | '\u{FE54}' // SMALL SEMICOLON
            | '\u{FE55}' // SMALL COLON
            | '\u{FF0C}' // FULLWIDTH COMMA
            | '\u{FF1A}' // FULLWIDTH COLON
            | '\u{FF1B}' // FULLWIDTH SEMICOLON
            | '\u{FF64}' // HALFWIDTH IDEOGRAPHIC COMMA
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
    let start = word.find(is_alphanumeric)?;
    let (last, c) = word
        .char_indices()
        .rev()
        .find(|&(_, c)| is_alphanumeric(c))?;
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
    // Case folding alone turns no letter into a blank or punctuation: nothing to clean.
    if let Some(key) = fold_simple(word) {
        return key;
    }
    let mut key = fold_pipeline(word);
    // A few compatibility characters decompose into text with blanks, separators or edge
    // punctuation ("¨" is a space and a combining diaeresis, "⒈" is "1."). Clean those out and
    // fold again, so a key is itself a normalised word: one with no blank inside, which
    // normalises to itself and prints sensibly in `vmnd route`. Once is enough in practice; the
    // bound only guards against a pathological loop.
    for _ in 0..3 {
        let Some(span) = trim_word(&key, 0..key.len()) else {
            break;
        };
        let is_break = |c: char| c.is_whitespace() || is_separator(c);
        if span == (0..key.len()) && !key.contains(is_break) {
            break;
        }
        let cleaned: String = key[span].chars().filter(|&c| !is_break(c)).collect();
        if cleaned == key {
            break;
        }
        key = fold_chars(&cleaned);
    }
    key
}

/// The compatibility caseless form of `word`, through [`fold_simple`] when it applies.
fn fold_chars(word: &str) -> String {
    fold_simple(word).unwrap_or_else(|| fold_pipeline(word))
}

/// The full pipeline: exact for any text, and slow (six chained iterators, each buffering).
fn fold_pipeline(word: &str) -> String {
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

/// The common case of non-ASCII words (Cyrillic, Devanagari, Arabic, CJK...), equal to
/// [`fold_pipeline`] and an order of magnitude faster: when the word, before and after case
/// folding, is stable under normalisation (no character has a decomposition, combining marks are
/// in canonical order, nothing composes), every normalisation step of the pipeline is the
/// identity and the result is the case folding alone (case folding being idempotent). The
/// per-character facts come from [`char_info`]; the checks that depend on neighbours are here.
/// `None` (take the pipeline) for anything else, including every character outside the BMP.
fn fold_simple(word: &str) -> Option<String> {
    let info = char_info();
    // Facts about one character, the ASCII ones without a table lookup.
    let facts = |c: char| -> Option<CharInfo> {
        if c.is_ascii() {
            Some(CharInfo {
                fold: c.to_ascii_lowercase() as u16,
                ccc: 0,
                flags: 0,
            })
        } else {
            info.get(c as usize).copied()
        }
    };
    // Whether `c` after `prev` keeps the text stable: marks in canonical order, and a character
    // that may compose ("Maybe" in the NFKC quick check, e.g. a Devanagari nukta) directly after
    // a starter it does not compose with. Anything less simple takes the pipeline.
    let stable = |prev: Option<(char, u8)>, c: char, ccc: u8, maybe: bool| match prev {
        Some((p, p_ccc)) => {
            !(ccc != 0 && p_ccc > ccc)
                && !(maybe && (p_ccc != 0 || unicode_normalization::char::compose(p, c).is_some()))
        }
        None => true,
    };
    let mut out = String::with_capacity(word.len());
    let (mut prev_in, mut prev_out) = (None, None);
    for c in word.chars() {
        if is_ignorable(c) {
            continue;
        }
        let c_info = facts(c)?;
        let f = char::from_u32(u32::from(c_info.fold)).filter(|&f| f != '\0')?;
        let f_info = facts(f)?;
        if !stable(prev_in, c, c_info.ccc, c_info.flags & MAYBE != 0)
            || !stable(prev_out, f, f_info.ccc, f_info.flags & MAYBE != 0)
        {
            return None;
        }
        out.push(f);
        prev_in = Some((c, c_info.ccc));
        prev_out = Some((f, f_info.ccc));
    }
    Some(out)
}

/// What [`fold_simple`] needs to know about one BMP character.
#[derive(Clone, Copy)]
struct CharInfo {
    /// Its full case folding when that is a single BMP character and neither it nor the
    /// character has a decomposition or is excluded from NFKC; else 0.
    fold: u16,
    /// Canonical combining class.
    ccc: u8,
    /// [`MAYBE`], [`ALNUM`], [`MARK`].
    flags: u8,
}

/// NFKC quick check "Maybe": the character may compose with the one before it.
const MAYBE: u8 = 1;
/// `char::is_alphanumeric`: a letter or a digit, what a word must contain.
const ALNUM: u8 = 2;
/// A combining mark (General_Category M), part of the word it follows.
const MARK: u8 = 4;

/// `char::is_alphanumeric`, from the table for the BMP: the std lookup costs tens of
/// nanoseconds per non-ASCII character.
fn is_alphanumeric(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphanumeric()
    } else if let Some(info) = char_info().get(c as usize) {
        info.flags & ALNUM != 0
    } else {
        c.is_alphanumeric()
    }
}

/// Whether `c` is a combining mark, from the table for the BMP.
fn is_combining_mark(c: char) -> bool {
    if c.is_ascii() {
        false
    } else if let Some(info) = char_info().get(c as usize) {
        info.flags & MARK != 0
    } else {
        unicode_normalization::char::is_combining_mark(c)
    }
}

/// [`CharInfo`] for every BMP character, computed once on first use (a few milliseconds; 256
/// KiB). Looking these facts up per character through the Unicode crates costs ten table
/// searches, more than everything else in matching a message.
fn char_info() -> &'static [CharInfo] {
    use unicode_normalization::char::{canonical_combining_class, decompose_compatible};
    use unicode_normalization::{IsNormalized, is_nfkc_quick};
    static TABLE: std::sync::OnceLock<Box<[CharInfo]>> = std::sync::OnceLock::new();
    let undecomposable = |c: char| {
        let mut only_itself = true;
        decompose_compatible(c, |d| only_itself &= d == c);
        only_itself
    };
    let info_of = |c: char| {
        let quick = is_nfkc_quick(std::iter::once(c));
        let mut info = CharInfo {
            fold: 0,
            ccc: canonical_combining_class(c),
            flags: (u8::from(quick == IsNormalized::Maybe) * MAYBE)
                | (u8::from(c.is_alphanumeric()) * ALNUM)
                | (u8::from(unicode_normalization::char::is_combining_mark(c)) * MARK),
        };
        if quick == IsNormalized::No || !undecomposable(c) {
            return info;
        }
        let mut folded = std::iter::once(c).default_case_fold();
        if let (Some(f), None) = (folded.next(), folded.next())
            && let Ok(f16) = u16::try_from(u32::from(f))
            && is_nfkc_quick(std::iter::once(f)) != IsNormalized::No
            && undecomposable(f)
        {
            info.fold = f16;
        }
        info
    };
    TABLE.get_or_init(|| {
        (0..=0xFFFF_u32)
            .map(|u| {
                char::from_u32(u).map_or(
                    CharInfo {
                        fold: 0,
                        ccc: 0,
                        flags: 0,
                    },
                    info_of,
                )
            })
            .collect()
    })
}

/// Identifies one keyword rule; the router maps it back to its campaign. Aliases of a keyword
/// share its id. `RuleId(u32::MAX)` is reserved: the index uses it for "no rule here".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(pub u32);

/// "None" in the index's packed u32 fields (no rule at this edge, no children below it).
const NONE: u32 = u32::MAX;

/// A trie node while building.
#[derive(Default)]
struct BuildNode {
    children: Vec<(u32, u32)>,
    rule: Option<RuleId>,
}

/// Collects phrases, then builds an immutable [`KeywordIndex`].
#[derive(Default)]
pub struct KeywordIndexBuilder {
    /// Every distinct word of every phrase, interned once for all numbers (campaign words repeat
    /// across numbers: "join", "stop", "win"), so a trie edge is labelled by a 4-byte id.
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
    /// first. An empty phrase matches nothing and is ignored ([`keyword_words`] never returns
    /// one). Panics on the reserved `RuleId(u32::MAX)`.
    pub fn insert(&mut self, vmn: &str, words: &[String], rule: RuleId) -> Result<(), RuleId> {
        assert_ne!(rule.0, NONE, "RuleId(u32::MAX) is reserved");
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
        let id = u32::try_from(self.nodes.len())
            .ok()
            .filter(|&id| id != NONE)
            .expect("fewer than 4 billion trie nodes");
        self.nodes.push(BuildNode::default());
        id
    }

    /// Freezes the tries into one compact, read-only index.
    pub fn build(self) -> KeywordIndex {
        // Random per index: nobody can choose words that collide in a table they cannot see.
        let seed = fastrand::u64(..);
        // Only nodes with children need an id: a leaf is fully described by the edge to it.
        let mut ids = vec![NONE; self.nodes.len()];
        let mut next = 0;
        for (id, node) in ids.iter_mut().zip(&self.nodes) {
            if !node.children.is_empty() {
                *id = next;
                next += 1;
            }
        }
        let words = StrTable::new(self.words.iter().map(|(w, &id)| (&**w, id)), seed ^ 1);
        let roots = StrTable::new(
            self.roots
                .iter()
                .map(|(v, &root)| (&**v, ids[root as usize])),
            seed ^ 2,
        );
        let edge = |child: u32, key: u64| EdgeSlot {
            key,
            child: ids[child as usize],
            rule: self.nodes[child as usize].rule.map_or(NONE, |r| r.0),
        };
        // Edges from a number's root go in `first`, placed by the hashes of the number and the
        // word as text (see `walk`); all others in `edges`, placed by their key.
        let mut word_of = vec![""; self.words.len()];
        for (w, &id) in &self.words {
            word_of[id as usize] = w;
        }
        let root_edges = self
            .roots
            .values()
            .map(|&r| self.nodes[r as usize].children.len());
        let mut first = EdgeTable::with_capacity(root_edges.sum(), seed ^ 3);
        let mut is_root = vec![false; self.nodes.len()];
        for (vmn, &root) in &self.roots {
            is_root[root as usize] = true;
            for &(word, child) in &self.nodes[root as usize].children {
                let at = first_level_hash(roots.hash(vmn), words.hash(word_of[word as usize]));
                first.insert_at(at, edge(child, edge_key(ids[root as usize], word)));
            }
        }
        let inner = self.nodes.iter().zip(&is_root).filter(|(_, r)| !**r);
        let mut edges = EdgeTable::with_capacity(inner.map(|(n, _)| n.children.len()).sum(), seed);
        for (parent, node) in self.nodes.iter().enumerate() {
            if is_root[parent] {
                continue;
            }
            for &(word, child) in &node.children {
                let key = edge_key(ids[parent], word);
                edges.insert_at(edges.hash(key), edge(child, key));
            }
        }
        // `vmnd check` asks for prefix pairs per number; they are few, so computing them now
        // and keeping them sorted costs less than keeping the children lists to walk later.
        let mut prefix_pairs = Vec::new();
        for &root in self.roots.values() {
            let mut ancestors = Vec::new();
            collect_prefix_pairs(&self.nodes, root, &mut ancestors, &mut |shorter, longer| {
                prefix_pairs.push((ids[root as usize], shorter, longer))
            });
        }
        prefix_pairs.sort_unstable();
        let max_word_len = self.words.keys().map(|w| w.len()).max().unwrap_or(0);
        KeywordIndex {
            words,
            max_word_len,
            roots,
            first,
            edges,
            prefix_pairs: prefix_pairs.into_boxed_slice(),
            phrases: self.phrases,
        }
    }
}

/// Calls `pair` for every (shorter, longer) pair of phrases on the paths below `node`.
fn collect_prefix_pairs(
    nodes: &[BuildNode],
    node: u32,
    ancestors: &mut Vec<RuleId>,
    pair: &mut impl FnMut(RuleId, RuleId),
) {
    let node = &nodes[node as usize];
    if let Some(rule) = node.rule {
        for &shorter in ancestors.iter() {
            pair(shorter, rule);
        }
        ancestors.push(rule);
    }
    // Recursion depth is bounded by the words of a phrase (at most MAX_KEYWORD_WORDS from
    // config; any caller's phrase length otherwise).
    for &(_, child) in &node.children {
        collect_prefix_pairs(nodes, child, ancestors, pair);
    }
    if node.rule.is_some() {
        ancestors.pop();
    }
}

/// Every number's keyword phrases, for matching a message's first words. Immutable: built once
/// per config (or keyword change), published as a snapshot, read without locks.
///
/// Layout, for few cache misses at 100,000 phrases (a miss costs more than all the arithmetic
/// of a lookup): open-addressing tables with the keys in their slots, each probed once per step.
/// - `roots`: number -> its root node id.
/// - `words`: word -> id, one table for all numbers; a message word missing here matches
///   nothing anywhere, without touching any trie.
/// - `first`: the edges from the numbers' roots, (root id, word id) -> the rule ending there, if
///   any, and the child node id if longer phrases continue. Placed by the hashes of the number
///   and of the word *as text*, so the slot's address is known before `roots` and `words` have
///   answered: the three lookups of a message's first word are independent, and their cache
///   misses overlap instead of following one another. The ids in the slot then confirm it.
/// - `edges`: the same for the edges below the first word, placed by (node id, word id).
///
/// A hashed edge costs the same at a number's root whether it has ten keywords or ten thousand
/// (a shared short code).
#[derive(Default)]
pub struct KeywordIndex {
    words: StrTable,
    /// Longest interned word in bytes: a longer message word cannot match, so it is not hashed.
    max_word_len: usize,
    roots: StrTable,
    first: EdgeTable,
    edges: EdgeTable,
    /// (root node id, shorter rule, longer rule), sorted, for [`KeywordIndex::prefix_pairs`].
    prefix_pairs: Box<[(u32, RuleId, RuleId)]>,
    phrases: usize,
}

impl std::fmt::Debug for KeywordIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeywordIndex")
            .field("phrases", &self.phrases)
            .field("numbers", &self.roots.len)
            .field("words", &self.words.len)
            .field("edges", &(self.first.len + self.edges.len))
            .finish()
    }
}

impl KeywordIndex {
    /// Follows `words` down `vmn`'s trie, calling `found` for every phrase passed, shortest first.
    #[inline]
    fn walk(&self, vmn: &str, words: &[String], mut found: impl FnMut(RuleId, usize)) {
        let Some(first_word) = words.first() else {
            return;
        };
        if first_word.len() > self.max_word_len {
            return;
        }
        let (vmn_hash, word_hash) = (self.roots.hash(vmn), self.words.hash(first_word));
        let at = first_level_hash(vmn_hash, word_hash);
        // Start loading the first-level slot now: its address needs only the two hashes, so its
        // cache miss overlaps with those of the two lookups below rather than following them.
        self.first.touch(at);
        let root = self.roots.get_hashed(vmn, vmn_hash);
        let word = self.words.get_hashed(first_word, word_hash);
        let (Some(root), Some(word)) = (root, word) else {
            return;
        };
        let Some(mut edge) = self.first.get_at(at, edge_key(root, word)) else {
            return;
        };
        let mut depth = 1;
        loop {
            if edge.rule != NONE {
                found(RuleId(edge.rule), depth);
            }
            let Some(word) = words.get(depth) else {
                return;
            };
            if edge.child == NONE || word.len() > self.max_word_len {
                return;
            }
            let Some(word) = self.words.get(word) else {
                return;
            };
            let key = edge_key(edge.child, word);
            let Some(next) = self.edges.get_at(self.edges.hash(key), key) else {
                return;
            };
            edge = next;
            depth += 1;
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

    /// Pairs of phrases of `vmn` where the first is a strict prefix (by whole words) of the
    /// second, as (shorter rule, longer rule), sorted; `vmnd check` warns about each. A rule
    /// whose alias is a prefix of its own keyword pairs with itself.
    pub fn prefix_pairs(&self, vmn: &str) -> Vec<(RuleId, RuleId)> {
        let Some(root) = self.roots.get(vmn) else {
            return Vec::new();
        };
        let from = self.prefix_pairs.partition_point(|p| p.0 < root);
        self.prefix_pairs[from..]
            .iter()
            .take_while(|p| p.0 == root)
            .map(|&(_, shorter, longer)| (shorter, longer))
            .collect()
    }

    /// Numbers with at least one phrase, in no particular order.
    pub fn numbers(&self) -> impl Iterator<Item = &str> {
        self.roots.keys()
    }

    /// The heap memory the index holds, in bytes (tables, spilled long keys, prefix pairs), for
    /// benchmarks and metrics.
    pub fn heap_bytes(&self) -> usize {
        self.words.heap_bytes()
            + self.roots.heap_bytes()
            + self.first.heap_bytes()
            + self.edges.heap_bytes()
            + std::mem::size_of_val(&*self.prefix_pairs)
    }
}

/// Key of the edge from `node` labelled `word`.
fn edge_key(node: u32, word: u32) -> u64 {
    (u64::from(node) << 32) | u64::from(word)
}

const HASH_K: u64 = 0x9E37_79B9_7F4A_7C15;

/// The 128-bit product of `a` and `b`, folded to 64 bits: the mixing step of foldhash and
/// wyhash, one multiplication per 8 bytes of key.
#[inline]
fn folded_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// A seeded hash of a short byte string. The std SipHash would do, at several times the cost for
/// the 2-20 byte keys here (numbers and words); seeding keeps it safe against chosen collisions.
#[inline]
fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed ^ (bytes.len() as u64).wrapping_mul(HASH_K);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        h = folded_mul(h ^ w, HASH_K);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = folded_mul(h ^ u64::from_le_bytes(w), HASH_K);
    }
    folded_mul(h ^ seed.rotate_left(32), HASH_K ^ 0xA076_1D64_78BD_642F)
}

/// Where the edge for (number, word) goes in the first-level table, from their text hashes.
#[inline]
fn first_level_hash(vmn_hash: u64, word_hash: u64) -> u64 {
    folded_mul(vmn_hash ^ word_hash.rotate_left(32), HASH_K)
}

/// Maps a hash onto `0..len` without a division (Lemire's "fastrange"); uses the hash's high
/// bits, so the low bits are free for a slot's tag.
#[inline]
fn slot_of(hash: u64, len: usize) -> usize {
    ((u128::from(hash) * len as u128) >> 64) as usize
}

/// Slots for `n` entries: load at most 2/3 keeps linear probes short, and at least one slot
/// stays empty so a probe for a missing key always ends.
fn table_size(n: usize) -> usize {
    if n == 0 { 0 } else { n + n / 2 + 1 }
}

/// Keys up to this many bytes live in their slot; longer ones in the table's arena.
const INLINE: usize = 20;

/// One slot of a [`StrTable`]: 32 bytes, aligned so it never straddles two cache lines.
#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
struct StrSlot {
    /// The key's bytes if it fits, else its offset in the arena (first 4 bytes, little endian).
    bytes: [u8; INLINE],
    /// Low 32 bits of the key's hash: most mismatches are rejected without comparing bytes.
    tag: u32,
    /// Key length in bytes; 0 marks an empty slot (keys are never empty).
    len: u32,
    value: u32,
}

/// A read-only open-addressing map from short strings to u32, built once.
#[derive(Default)]
struct StrTable {
    slots: Box<[StrSlot]>,
    /// Keys longer than [`INLINE`] bytes, back to back.
    arena: Box<[u8]>,
    seed: u64,
    len: usize,
}

impl StrTable {
    fn new<'k>(entries: impl ExactSizeIterator<Item = (&'k str, u32)>, seed: u64) -> StrTable {
        let len = entries.len();
        let mut slots = vec![StrSlot::default(); table_size(len)].into_boxed_slice();
        let mut arena = Vec::new();
        for (key, value) in entries {
            debug_assert!(!key.is_empty());
            let h = hash_bytes(seed, key.as_bytes());
            let mut slot = StrSlot {
                tag: h as u32,
                len: u32::try_from(key.len()).expect("key shorter than 4 GiB"),
                value,
                ..StrSlot::default()
            };
            if key.len() <= INLINE {
                slot.bytes[..key.len()].copy_from_slice(key.as_bytes());
            } else {
                let offset = u32::try_from(arena.len()).expect("keys shorter than 4 GiB in all");
                slot.bytes[..4].copy_from_slice(&offset.to_le_bytes());
                arena.extend_from_slice(key.as_bytes());
            }
            let mut i = slot_of(h, slots.len());
            while slots[i].len != 0 {
                i = if i + 1 == slots.len() { 0 } else { i + 1 };
            }
            slots[i] = slot;
        }
        StrTable {
            slots,
            arena: arena.into_boxed_slice(),
            seed,
            len,
        }
    }

    fn key_of<'s>(&'s self, slot: &'s StrSlot) -> &'s [u8] {
        let len = slot.len as usize;
        if len <= INLINE {
            &slot.bytes[..len]
        } else {
            let offset = u32::from_le_bytes(slot.bytes[..4].try_into().expect("4 bytes")) as usize;
            &self.arena[offset..offset + len]
        }
    }

    #[inline]
    fn hash(&self, key: &str) -> u64 {
        hash_bytes(self.seed, key.as_bytes())
    }

    #[inline]
    fn get(&self, key: &str) -> Option<u32> {
        self.get_hashed(key, self.hash(key))
    }

    /// [`StrTable::get`] with `h == self.hash(key)` already computed.
    #[inline]
    fn get_hashed(&self, key: &str, h: u64) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let key = key.as_bytes();
        let mut i = slot_of(h, self.slots.len());
        loop {
            let slot = &self.slots[i];
            if slot.len == 0 {
                return None;
            }
            if slot.tag == h as u32 && slot.len as usize == key.len() && self.key_of(slot) == key {
                return Some(slot.value);
            }
            i = if i + 1 == self.slots.len() { 0 } else { i + 1 };
        }
    }

    fn keys(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().filter(|s| s.len != 0).map(|s| {
            // Keys were inserted from &str and are stored byte for byte.
            std::str::from_utf8(self.key_of(s)).unwrap_or_default()
        })
    }

    fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.slots) + self.arena.len()
    }
}

/// One edge of the trie, as stored: 16 bytes, four to a cache line.
#[derive(Clone, Copy)]
#[repr(C)]
struct EdgeSlot {
    /// [`edge_key`]; `u64::MAX` marks an empty slot (no node has id `u32::MAX`).
    key: u64,
    /// The node this edge leads to, if phrases continue below it; else [`NONE`].
    child: u32,
    /// The rule of the phrase ending at this edge; else [`NONE`].
    rule: u32,
}

const EMPTY_EDGE: EdgeSlot = EdgeSlot {
    key: u64::MAX,
    child: NONE,
    rule: NONE,
};

/// A read-only open-addressing map from (node, word) to an edge, built once. Where a key goes is
/// the caller's choice (`at`), the same at insertion and lookup: [`EdgeTable::hash`] of the key,
/// or for the first level a hash of the texts behind it.
#[derive(Default)]
struct EdgeTable {
    slots: Box<[EdgeSlot]>,
    seed: u64,
    len: usize,
}

impl EdgeTable {
    fn with_capacity(n: usize, seed: u64) -> EdgeTable {
        EdgeTable {
            slots: vec![EMPTY_EDGE; table_size(n)].into_boxed_slice(),
            seed,
            len: 0,
        }
    }

    #[inline]
    fn hash(&self, key: u64) -> u64 {
        folded_mul(key ^ self.seed, HASH_K)
    }

    /// Inserts an edge; keys are distinct (a builder node's children have distinct words).
    fn insert_at(&mut self, at: u64, edge: EdgeSlot) {
        debug_assert!(self.len + 1 < self.slots.len());
        let mut i = slot_of(at, self.slots.len());
        while self.slots[i].key != u64::MAX {
            i = if i + 1 == self.slots.len() { 0 } else { i + 1 };
        }
        self.slots[i] = edge;
        self.len += 1;
    }

    /// Loads the slot where a probe from `at` starts, and discards it: a prefetch.
    #[inline]
    fn touch(&self, at: u64) {
        if !self.slots.is_empty() {
            std::hint::black_box(self.slots[slot_of(at, self.slots.len())].key);
        }
    }

    #[inline]
    fn get_at(&self, at: u64, key: u64) -> Option<EdgeSlot> {
        if self.slots.is_empty() {
            return None;
        }
        let mut i = slot_of(at, self.slots.len());
        loop {
            let slot = self.slots[i];
            if slot.key == key {
                return Some(slot);
            }
            if slot.key == u64::MAX {
                return None;
            }
            i = if i + 1 == self.slots.len() { 0 } else { i + 1 };
        }
    }

    fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.slots)
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

    /// Every compatibility form of a separator (the full-width, small, half-width and
    /// vertical ones) is a separator itself: otherwise it would be deleted by the fold, and
    /// "JOIN､summer" would be one word where "JOIN、summer" is two.
    #[test]
    fn compatibility_forms_of_separators_separate() {
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            let nfkc: Vec<char> = c.to_string().nfkc().collect();
            if let [single] = nfkc[..] {
                if is_separator(single) {
                    assert!(
                        is_separator(c),
                        "U+{:04X} is a form of {single:?}",
                        c as u32
                    );
                }
            }
        }
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
            ("JOIN､summer", &["join", "summer"]),
            ("VOTE︓A", &["vote", "a"]),
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
        const PIECES: &[u8] = b"aZ09 \t\n\x0b\r,;:!#.-'\"()@_\x00\x7f";
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let text: String = (0..rng.usize(0..24))
                .map(|_| {
                    if rng.bool() {
                        PIECES[rng.usize(..PIECES.len())] as char
                    } else {
                        rng.u8(0..128) as char
                    }
                })
                .collect();
            let max = rng.usize(0..8);
            let fast = normalize_ascii(&text, max);
            assert_eq!(fast, normalize_unicode(&text, max), "{text:?}");
            for (word, span) in fast.words().iter().zip(fast.spans()) {
                assert_eq!(*word, fold_full(&text[span.clone()]), "{text:?}");
            }
        }
    }

    #[test]
    fn simple_fold_agrees_with_the_full_pipeline() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut simple = 0;
        for _ in 0..20_000 {
            let word = random_text(&mut rng);
            if let Some(fast) = fold_simple(&word) {
                simple += 1;
                assert_eq!(fast, fold_pipeline(&word), "{word:?}");
            }
        }
        // The shortcut must actually apply to the scripts it is for.
        for word in ["ПОДПИСКА", "जुड़ें", "اشترك", "加入俱乐部", "ΟΔΟΣ", "Москва"]
        {
            assert_eq!(fold_simple(word), Some(fold_pipeline(word)), "{word}");
        }
        // Not to characters that fold to several ("ß" -> "ss") or have a decomposition ("é",
        // "Ё", full-width "Ｊ"): the pipeline handles those.
        for word in ["Straße", "Café", "Ёлка", "ＪＯＩＮ"] {
            assert_eq!(fold_simple(word), None, "{word}");
        }
        assert!(simple > 500, "{simple}");
    }

    /// Every BMP character alone, and after a consonant, a vowel and a mark: the table-driven
    /// shortcut gives what the full pipeline gives whenever it applies.
    #[test]
    fn simple_fold_agrees_with_the_full_pipeline_on_every_bmp_character() {
        let mut applied = 0;
        for c in (0x80..=0xFFFF_u32).filter_map(char::from_u32) {
            assert_eq!(is_alphanumeric(c), c.is_alphanumeric(), "{c:?}");
            let mark = unicode_normalization::char::is_combining_mark(c);
            assert_eq!(is_combining_mark(c), mark, "{c:?}");
            for word in [
                c.to_string(),
                format!("क{c}"),
                format!("A{c}"),
                format!("\u{301}{c}"),
            ] {
                if let Some(fast) = fold_simple(&word) {
                    applied += 1;
                    assert_eq!(fast, fold_pipeline(&word), "{word:?} U+{:04X}", c as u32);
                }
            }
        }
        assert!(applied > 100_000, "{applied}");
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
        // (number, text, expected (rule, words matched))
        type Case<'a> = (&'a str, &'a str, Option<(u32, usize)>);
        let table: &[Case] = &[
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

    /// The index against the obvious model (every phrase in a list, compared word by word) on
    /// random phrases: short and long words (inline and spilled keys), one number with thousands
    /// of phrases (a shared short code) and many with few, multi-word prefixes of each other.
    #[test]
    fn index_agrees_with_a_naive_model() {
        let mut rng = fastrand::Rng::with_seed(42);
        let vocabulary: Vec<String> = (0..300)
            .map(|i| match i % 3 {
                0 => format!("w{i}"),
                1 => format!("{}{i}", "long".repeat(rng.usize(5..9))),
                _ => format!("ж{i}"),
            })
            .collect();
        let phrase = |rng: &mut fastrand::Rng| -> Vec<String> {
            (0..rng.usize(1..=4))
                .map(|_| vocabulary[rng.usize(..40)].clone())
                .collect()
        };
        let vmns: Vec<String> = (0..50).map(|i| format!("5676{i}")).collect();
        let mut model: Vec<(String, Vec<String>, RuleId)> = Vec::new();
        let mut b = KeywordIndexBuilder::new();
        for rule in 0..5_000 {
            let vmn = if rule % 2 == 0 {
                &vmns[0]
            } else {
                &vmns[rng.usize(..vmns.len())]
            };
            let words = phrase(&mut rng);
            let existing = model.iter().find(|(v, w, _)| v == vmn && *w == words);
            let got = b.insert(vmn, &words, RuleId(rule));
            match existing {
                Some(&(_, _, first)) => assert_eq!(got, Err(first)),
                None => {
                    assert_eq!(got, Ok(()));
                    model.push((vmn.clone(), words, RuleId(rule)));
                }
            }
        }
        let idx = b.build();
        assert_eq!(idx.len(), model.len());
        let mut numbers: Vec<&str> = idx.numbers().collect();
        numbers.sort_unstable();
        let mut expected_numbers: Vec<&str> = model.iter().map(|(v, _, _)| v.as_str()).collect();
        expected_numbers.sort_unstable();
        expected_numbers.dedup();
        assert_eq!(numbers, expected_numbers);
        for _ in 0..5_000 {
            let vmn = if rng.bool() {
                &vmns[0]
            } else {
                &vmns[rng.usize(..vmns.len())]
            };
            let mut words = phrase(&mut rng);
            if rng.u8(..4) == 0 {
                words.push(vocabulary[rng.usize(..vocabulary.len())].clone());
            }
            let mut expected: Vec<(RuleId, usize)> = model
                .iter()
                .filter(|(v, w, _)| v == vmn && words.starts_with(w))
                .map(|(_, w, r)| (*r, w.len()))
                .collect();
            expected.sort_unstable_by_key(|&(_, n)| std::cmp::Reverse(n));
            assert_eq!(idx.matches(vmn, &words), expected, "{vmn} {words:?}");
            assert_eq!(idx.longest(vmn, &words), expected.first().copied());
        }
        for vmn in &vmns {
            let mut expected: Vec<(RuleId, RuleId)> = Vec::new();
            for (_, w1, r1) in model.iter().filter(|(v, _, _)| v == vmn) {
                for (_, w2, r2) in model.iter().filter(|(v, _, _)| v == vmn) {
                    if w2.len() > w1.len() && w2.starts_with(w1) {
                        expected.push((*r1, *r2));
                    }
                }
            }
            expected.sort_unstable();
            assert_eq!(idx.prefix_pairs(vmn), expected, "{vmn}");
        }
    }

    /// Random text from a mix of ASCII, blanks, separators, marks, invisible characters and
    /// several scripts, including characters whose case folding or decomposition expands.
    fn random_text(rng: &mut fastrand::Rng) -> String {
        // Blanks, separators, marks, invisible characters, several scripts, and characters whose
        // case folding or decomposition expands, reorders or composes.
        const PIECES: &str = "aZ0 \t\n,:!#\u{A0}\u{3000}\u{200B}\u{200D}\u{FE0F}\u{301}\u{316}\
            \u{345}\u{94D}\u{93C}ßẞİŉΐﬃﬅΣᾳᾼǅ\u{212A}कड़жЖёЁع加Ｊ，👍\u{10400}\u{1100}\u{1161}\u{11A8}\
            ¨⒈🄁";
        let len = rng.usize(0..40);
        (0..len)
            .map(|_| {
                if rng.bool() {
                    let pieces = PIECES.chars().count();
                    PIECES.chars().nth(rng.usize(..pieces)).expect("in range")
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
                assert_eq!(words(word), std::slice::from_ref(word), "{text:?}");
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
