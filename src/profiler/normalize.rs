//! SQL normalisation and the per-request analysis: similar-query groups and N+1 findings.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use serde::Serialize;

use super::record::QueryRecord;

/// Longest normalised statement kept, in bytes; longer ones end with `…`.
const MAX_STATEMENT_LEN: usize = 4096;

/// Normalises a SQL statement so that executions differing only in their values compare
/// equal, and so that no literal value is ever stored.
///
/// - string, numeric, hexadecimal and boolean literals become `?`;
/// - placeholders of every driver (`$1`, `?1`, `:name`, `@p1`) become `?`;
/// - comments are removed and runs of whitespace folded into one space;
/// - `IN (?, ?, ?)` lists collapse to `IN (?)`, and repeated `VALUES` tuples to one;
/// - a trailing `;` is dropped, and very long statements are cut at 4 KiB.
///
/// # Example
///
/// ```
/// use tower_rampart::profiler::normalize_sql;
///
/// assert_eq!(
///     normalize_sql("SELECT * FROM t\n  WHERE id IN (1, 2, 3) AND name = 'bob' -- hi"),
///     "SELECT * FROM t WHERE id IN (?) AND name = ?",
/// );
/// assert_eq!(normalize_sql("select 1 from t where a = $1"), normalize_sql("select 2 from t where a = $7"));
/// ```
pub fn normalize_sql(sql: &str) -> String {
    let mut out = normalize_once(sql);
    // Reading the output again gives the same text: a rewrite can bring tokens together
    // (a comment removed between `[` and a name makes `[name]`), so a statement is
    // normalised until it no longer changes (a few passes; most need the first only).
    for _ in 0..3 {
        let again = normalize_once(&out);
        if again == out {
            break;
        }
        out = again;
    }
    out
}

/// One pass of [`normalize_sql`].
fn normalize_once(sql: &str) -> String {
    let mut ambiguous = false;
    let mut tokens = tokenize(sql, true, &mut ambiguous, None);
    if ambiguous {
        // A `\'` inside a plain string: MySQL reads an escaped quote, standard
        // PostgreSQL a backslash followed by the end of the string. Whatever either
        // dialect reads as a literal is hidden.
        let mut spans = Vec::new();
        let _ = tokenize(sql, false, &mut false, Some(&mut spans));
        hide_words_in(sql, &mut tokens, &spans);
    }
    let tokens = collapse_lists(tokens);
    let mut out = String::with_capacity(sql.len().min(MAX_STATEMENT_LEN));
    let mut prev: Option<&Tok<'_>> = None;
    for tok in &tokens {
        if let Some(p) = prev
            && needs_space(p, tok)
        {
            out.push(' ');
        }
        match tok {
            Tok::Word(w) | Tok::Punct(w) => out.push_str(w),
            Tok::Value => out.push('?'),
        }
        prev = Some(tok);
        if out.len() > MAX_STATEMENT_LEN {
            let mut cut = MAX_STATEMENT_LEN;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push('…');
            break;
        }
    }
    out
}

/// Statements remembered by a [`Memo`].
const MEMO_ENTRIES: usize = 512;
/// Longest raw statement a [`Memo`] remembers, in bytes.
const MEMO_STATEMENT_LEN: usize = 8192;

/// Remembers the normalised form of recent statements: an application runs the same few
/// statements over and over (bind parameters keep them identical), and normalising is
/// what a profiled request's record costs most once it is finished.
///
/// Bounded: at most [`MEMO_ENTRIES`] statements of at most [`MEMO_STATEMENT_LEN`] bytes
/// each; when full it starts over (statements with inlined literals, all different, then
/// cost what they would cost without it).
pub(crate) struct Memo {
    map: Mutex<HashMap<Box<str>, Arc<str>, foldhash::fast::RandomState>>,
}

impl Default for Memo {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::with_hasher(foldhash::fast::RandomState::default())),
        }
    }
}

impl Memo {
    /// [`normalize_sql`], remembered.
    pub(crate) fn normalize(&self, sql: &str) -> String {
        if sql.len() > MEMO_STATEMENT_LEN {
            return normalize_sql(sql);
        }
        let lock = || self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = lock().get(sql) {
            return known.to_string();
        }
        // Normalised outside the lock.
        let normalized = normalize_sql(sql);
        let mut map = lock();
        if map.len() >= MEMO_ENTRIES {
            map.clear();
        }
        map.insert(sql.into(), normalized.as_str().into());
        normalized
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A token, borrowing its text from the statement (no allocation per token).
#[derive(Debug, Clone, PartialEq)]
enum Tok<'a> {
    /// An identifier, keyword or quoted identifier.
    Word(&'a str),
    /// A literal value or a placeholder.
    Value,
    /// Punctuation and operators.
    Punct(&'a str),
}

fn needs_space(prev: &Tok<'_>, next: &Tok<'_>) -> bool {
    let tight_after = |p: &str| p == "(" || p == " (" || p == "." || p == "[";
    // `" ("` carries its own space: an opening parenthesis keeps the spacing it had.
    let tight_before = |p: &str| matches!(p, ")" | "," | "." | ";" | "(" | " (" | "[" | "]");
    match (prev, next) {
        (Tok::Punct(p), _) if tight_after(p) => false,
        (_, Tok::Punct(n)) => !tight_before(n),
        _ => true,
    }
}

/// Word tokens of `toks` that overlap one of `spans` (byte ranges of `sql`) become values.
fn hide_words_in<'a>(sql: &'a str, toks: &mut [Tok<'a>], spans: &[(usize, usize)]) {
    for t in toks.iter_mut() {
        if let Tok::Word(w) = t {
            let from = w.as_ptr() as usize - sql.as_ptr() as usize;
            let to = from + w.len();
            if spans.iter().any(|&(a, b)| from < b && a < to) {
                *t = Tok::Value;
            }
        }
    }
}

/// Whether a double-quoted token sits where only an identifier can: after a dot (the `"c"`
/// of `"t"."c"`), or right after `FROM`, `JOIN`, `INTO`, `UPDATE`, `TABLE` or `AS`. Elsewhere MySQL and
/// SQLite read `"…"` as a string, so it is treated as a literal.
fn quoted_identifier_position(toks: &[Tok<'_>]) -> bool {
    const BEFORE: [&str; 6] = ["from", "join", "into", "update", "table", "as"];
    match toks.last() {
        Some(Tok::Punct(".")) => true,
        Some(Tok::Word(w)) if BEFORE.iter().any(|k| w.eq_ignore_ascii_case(k)) => true,
        // Only what comes before decides: what follows may itself be rewritten (`"x".5`,
        // `"x".X'…'`), and the answer must not change when the output is read again.
        _ => false,
    }
}

/// Tokenises `sql`. `backslash` reads `\` as an escape in every string (MySQL); without
/// it only in `E'…'` (PostgreSQL). `ambiguous` is set when that choice matters; `spans`
/// receives the byte ranges of literals.
#[allow(clippy::too_many_lines)]
fn tokenize<'a>(
    sql: &'a str,
    backslash: bool,
    ambiguous: &mut bool,
    mut spans: Option<&mut Vec<(usize, usize)>>,
) -> Vec<Tok<'a>> {
    let chars: Vec<char> = sql.chars().collect();
    // The byte offset of each character, and of the end: tokens are slices of `sql`.
    let offsets: Vec<usize> = sql
        .char_indices()
        .map(|(b, _)| b)
        .chain(std::iter::once(sql.len()))
        .collect();
    let text = |from: usize, to: usize| &sql[offsets[from]..offsets[to]];
    let mut toks = Vec::new();
    let mut i = 0;
    let n = chars.len();
    while i < n {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if (c == '-' && chars.get(i + 1) == Some(&'-'))
            || (c == '#' && !matches!(chars.get(i + 1), Some('>' | '-')))
        {
            // `--` comments, and MySQL's `#` (not PostgreSQL's `#>` and `#-` operators).
            while i < n && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            // Block comments nest in PostgreSQL; where they do not, more is dropped.
            let mut depth = 0usize;
            while i < n {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            i = i.min(n);
        } else if c == '\''
            || ((c == 'x'
                || c == 'X'
                || c == 'E'
                || c == 'e'
                || c == 'N'
                || c == 'n'
                || c == 'B'
                || c == 'b')
                && chars.get(i + 1) == Some(&'\'')
                && !prev_is_word_char(&chars, i))
        {
            // String literal, with '' escapes; prefixed forms x'..', E'..', N'..', B'..'.
            let start = i;
            if c != '\'' {
                i += 1;
            }
            i += 1;
            let escapes = backslash || c == 'E' || c == 'e';
            while i < n {
                if chars[i] == '\\' {
                    if c == '\'' && chars.get(i + 1) == Some(&'\'') {
                        *ambiguous = true;
                    }
                    if escapes {
                        i += 2;
                        continue;
                    }
                }
                if chars[i] == '\'' {
                    if chars.get(i + 1) == Some(&'\'') {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i = (i + 1).min(n);
            if let Some(spans) = spans.as_deref_mut() {
                spans.push((offsets[start], offsets[i]));
            }
            toks.push(Tok::Value);
        } else if c == '$'
            && chars
                .get(i + 1)
                .is_some_and(|d| d.is_ascii_digit() || *d == '$' || is_word_start(*d))
        {
            if chars.get(i + 1).is_some_and(char::is_ascii_digit) {
                i += 1;
                while i < n && chars[i].is_ascii_digit() {
                    i += 1;
                }
                toks.push(Tok::Value);
            } else {
                // Dollar-quoted string: $tag$ ... $tag$
                let start = i;
                let mut j = i + 1;
                while j < n && chars[j] != '$' && is_word_char(chars[j]) {
                    j += 1;
                }
                if j < n && chars[j] == '$' {
                    let tag = text(start, j + 1);
                    let body = text(j + 1, n);
                    if let Some(end) = body.find(tag) {
                        i = j + 1 + body[..end].chars().count() + tag.chars().count();
                    } else {
                        i = n;
                    }
                    if let Some(spans) = spans.as_deref_mut() {
                        spans.push((offsets[start], offsets[i]));
                    }
                    toks.push(Tok::Value);
                } else {
                    toks.push(Tok::Punct("$"));
                    i += 1;
                }
            }
        } else if c == '?' {
            i += 1;
            while i < n && chars[i].is_ascii_digit() {
                i += 1;
            }
            toks.push(Tok::Value);
        } else if (c == ':' || c == '@')
            && chars.get(i + 1).is_some_and(|d| is_word_start(*d))
            && !(c == ':' && i > 0 && chars[i - 1] == ':')
        {
            i += 1;
            while i < n && is_word_char(chars[i]) {
                i += 1;
            }
            toks.push(Tok::Value);
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // The whole number: `0x1F`, `0b1011`, `0o17`, `4_111_111`, `1.5e-3`, and any
            // letters glued to it, so no digit of it survives as a word.
            let hex = c == '0' && matches!(chars.get(i + 1), Some('x' | 'X'));
            while i < n {
                let d = chars[i];
                let part = d.is_alphanumeric() || d == '_' || d == '.';
                let exponent_sign = (d == '-' || d == '+')
                    && !hex
                    && matches!(chars[i - 1], 'e' | 'E')
                    && chars.get(i + 1).is_some_and(char::is_ascii_digit);
                if !(part || exponent_sign) {
                    break;
                }
                i += 1;
            }
            // A leading minus sign right after an operator or a keyword belongs to the literal.
            if matches!(toks.last(), Some(Tok::Punct(p)) if *p == "-") {
                let unary = match toks.len().checked_sub(2).map(|k| &toks[k]) {
                    None => true,
                    Some(Tok::Punct(q)) => *q != ")",
                    Some(Tok::Word(w)) => is_keyword(w),
                    Some(Tok::Value) => false,
                };
                if unary {
                    toks.pop();
                }
            }
            toks.push(Tok::Value);
        } else if c == '"' || c == '`' || (c == '[' && bracket_identifier(&chars[i + 1..])) {
            // Quoted identifiers: `…` (MySQL), […] (SQL Server: only a plain name, so that
            // `ARRAY['x']` and `a[1]` are not), "…" where only an identifier can stand.
            let close = if c == '[' { ']' } else { c };
            let start = i;
            i += 1;
            while i < n && chars[i] != close {
                if c == '"' && chars[i] == '\\' && backslash {
                    i += 1;
                }
                i += 1;
            }
            i = (i + 1).min(n);
            if c == '"' && !quoted_identifier_position(&toks) {
                if let Some(spans) = spans.as_deref_mut() {
                    spans.push((offsets[start], offsets[i]));
                }
                toks.push(Tok::Value);
            } else {
                toks.push(Tok::Word(text(start, i)));
            }
        } else if is_word_start(c) {
            let start = i;
            while i < n && is_word_char(chars[i]) {
                i += 1;
            }
            let word = text(start, i);
            if word.eq_ignore_ascii_case("true") || word.eq_ignore_ascii_case("false") {
                toks.push(Tok::Value);
            } else {
                toks.push(Tok::Word(word));
            }
        } else {
            // Operators: keep two-character ones together.
            let two = text(i, (i + 2).min(n));
            if c == '(' {
                let spaced = i > 0 && chars[i - 1].is_whitespace() && !toks.is_empty();
                toks.push(Tok::Punct(if spaced { " (" } else { "(" }));
                i += 1;
            } else if matches!(
                two,
                "<=" | ">=" | "<>" | "!=" | "||" | "::" | "->" | "=>" | "#>" | "#-"
            ) {
                toks.push(Tok::Punct(two));
                i += 2;
            } else {
                toks.push(Tok::Punct(text(i, i + 1)));
                i += 1;
            }
        }
    }
    while matches!(toks.last(), Some(Tok::Punct(p)) if *p == ";") {
        toks.pop();
    }
    toks
}

/// Whether `[` opens a bracketed identifier: a plain name up to `]`.
fn bracket_identifier(rest: &[char]) -> bool {
    let Some(end) = rest.iter().position(|&c| c == ']') else {
        return false;
    };
    let name = &rest[..end];
    // Whitespace anywhere (a name on its own line): the same answer once the
    // normaliser has rewritten the whitespace around it.
    name.iter()
        .find(|c| !c.is_whitespace())
        .is_some_and(|&c| is_word_start(c))
        && name.iter().all(|&c| is_word_char(c) || c.is_whitespace())
}

fn is_keyword(w: &str) -> bool {
    const KEYWORDS: [&str; 22] = [
        "select",
        "where",
        "and",
        "or",
        "not",
        "then",
        "else",
        "when",
        "by",
        "values",
        "set",
        "in",
        "limit",
        "offset",
        "is",
        "like",
        "between",
        "return",
        "returning",
        "case",
        "on",
        "having",
    ];
    KEYWORDS.iter().any(|k| w.eq_ignore_ascii_case(k))
}

fn prev_is_word_char(chars: &[char], i: usize) -> bool {
    i > 0 && is_word_char(chars[i - 1])
}

fn is_word_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

fn is_punct(t: &Tok<'_>, s: &str) -> bool {
    matches!(t, Tok::Punct(p) if p.trim_start() == s)
}

/// `( ? , ? , ? )` → `( ? )`, and `VALUES (…), (…)` → `VALUES (…)`.
fn collapse_lists(toks: Vec<Tok<'_>>) -> Vec<Tok<'_>> {
    let mut out: Vec<Tok<'_>> = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        // A parenthesised list made only of values and commas.
        if is_punct(&toks[i], "(") {
            let mut j = i + 1;
            let mut values = 0;
            let mut ok = true;
            while j < toks.len() && !is_punct(&toks[j], ")") {
                match &toks[j] {
                    Tok::Value => values += 1,
                    t if is_punct(t, ",") => {}
                    _ => {
                        ok = false;
                        break;
                    }
                }
                j += 1;
            }
            if ok && j < toks.len() && values > 0 {
                let is_in =
                    matches!(out.last(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case("in"));
                if is_in {
                    out.push(toks[i].clone());
                    out.push(Tok::Value);
                    out.push(Tok::Punct(")"));
                    i = j + 1;
                    continue;
                }
                // A repeated tuple after a previous identical tuple: `, (…)` is dropped.
                let tuple = &toks[i..=j];
                if out.len() > tuple.len() && is_punct(&out[out.len() - 1], ",") {
                    let before = &out[out.len() - 1 - tuple.len()..out.len() - 1];
                    if before == tuple {
                        out.pop();
                        i = j + 1;
                        continue;
                    }
                }
            }
        }
        out.push(toks[i].clone());
        i += 1;
    }
    out
}

/// Queries that share one normalised statement within a request.
///
/// # Example
///
/// ```
/// use tower_rampart::profiler::SimilarGroup;
///
/// let g = SimilarGroup { statement: "SELECT ?".into(), count: 3, total_ms: 1.5 };
/// assert_eq!(g.count, 3);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct SimilarGroup {
    /// The normalised statement.
    pub statement: String,
    /// How many times it ran in the request.
    pub count: usize,
    /// Their summed duration in milliseconds.
    pub total_ms: f64,
}

/// An N+1 finding: one statement run sequentially many times after a source query.
///
/// # Example
///
/// ```
/// use tower_rampart::profiler::NPlusOne;
///
/// let f = NPlusOne {
///     source: "SELECT id FROM orders".into(),
///     statement: "SELECT * FROM items WHERE order_id = ?".into(),
///     count: 20,
///     total_ms: 4.0,
/// };
/// assert!(f.count >= 5);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct NPlusOne {
    /// The normalised statement that ran just before the repetition (the "1").
    pub source: String,
    /// The repeated normalised statement (the "N").
    pub statement: String,
    /// How many times it ran in a row.
    pub count: usize,
    /// The repeated executions' summed duration in milliseconds.
    pub total_ms: f64,
}

/// Groups queries by statement (groups of two or more, most frequent first).
pub(crate) fn similar_groups(queries: &[QueryRecord]) -> Vec<SimilarGroup> {
    if queries.len() < 2 {
        return Vec::new();
    }
    let mut map: HashMap<&str, (usize, f64, usize)> = HashMap::new();
    for (i, q) in queries.iter().enumerate() {
        let e = map.entry(q.statement.as_str()).or_insert((0, 0.0, i));
        e.0 += 1;
        e.1 += q.duration_ms;
    }
    let mut groups: Vec<(usize, SimilarGroup)> = map
        .into_iter()
        .filter(|(_, (count, _, _))| *count >= 2)
        .map(|(s, (count, total_ms, first))| {
            (
                first,
                SimilarGroup {
                    statement: s.to_owned(),
                    count,
                    total_ms,
                },
            )
        })
        .collect();
    groups.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(&b.0)));
    groups.into_iter().map(|(_, g)| g).collect()
}

/// N+1 findings: runs of at least `threshold` consecutive, non-overlapping executions of
/// one statement that follow a different ("source") statement. `queries` are in start order.
pub(crate) fn n_plus_one(queries: &[QueryRecord], threshold: usize) -> Vec<NPlusOne> {
    if queries.len() <= threshold {
        return Vec::new();
    }
    let mut findings = Vec::new();
    let mut i = 1;
    while i < queries.len() {
        let stmt = &queries[i].statement;
        let mut j = i + 1;
        while j < queries.len()
            && queries[j].statement == *stmt
            && queries[j].start_ms + 1e-6 >= queries[j - 1].start_ms + queries[j - 1].duration_ms
        {
            j += 1;
        }
        let run = j - i;
        let source = &queries[i - 1];
        if run >= threshold && source.statement != *stmt {
            findings.push(NPlusOne {
                source: source.statement.clone(),
                statement: stmt.clone(),
                count: run,
                total_ms: queries[i..j].iter().map(|q| q.duration_ms).sum(),
            });
        }
        i = j;
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn q(statement: &str, start_ms: f64, duration_ms: f64) -> QueryRecord {
        QueryRecord {
            statement: statement.to_owned(),
            start_ms,
            duration_ms,
            rows_returned: None,
            rows_affected: None,
            source: "test".into(),
        }
    }

    #[test]
    fn the_memo_answers_as_normalize_sql_and_stays_bounded() {
        let memo = Memo::default();
        let sql = "SELECT * FROM t WHERE id = $1 AND name = 'x'";
        assert_eq!(memo.normalize(sql), normalize_sql(sql));
        assert_eq!(memo.len(), 1);
        // Remembered: the second answer is the same, and nothing new is stored.
        assert_eq!(
            memo.normalize(sql),
            "SELECT * FROM t WHERE id = ? AND name = ?"
        );
        assert_eq!(memo.len(), 1);
        for i in 0..MEMO_ENTRIES * 3 {
            let sql = format!("SELECT {i} FROM t");
            assert_eq!(memo.normalize(&sql), "SELECT ? FROM t");
            assert!(memo.len() <= MEMO_ENTRIES);
        }
        // Too long to remember: normalised all the same.
        let long = format!("SELECT '{}'", "a".repeat(MEMO_STATEMENT_LEN));
        let before = memo.len();
        assert_eq!(memo.normalize(&long), "SELECT ?");
        assert_eq!(memo.len(), before);
    }

    #[test]
    fn literals_and_placeholders_become_question_marks() {
        let cases = [
            (
                "SELECT * FROM t WHERE a = 'x''y' AND b = 42",
                "SELECT * FROM t WHERE a = ? AND b = ?",
            ),
            (
                "select a from t where b = $1 and c = ?2 and d = :name and e = @p1",
                "select a from t where b = ? and c = ? and d = ? and e = ?",
            ),
            (
                "SELECT -1.5e3, 0xFF, x'00ff', TRUE, false",
                "SELECT ?, ?, ?, ?, ?",
            ),
            ("SELECT a - 1 FROM t", "SELECT a - ? FROM t"),
            (
                "SELECT \"Weird Col\", `b`, [c] FROM \"t1\"",
                "SELECT ?, `b`, [c] FROM \"t1\"",
            ),
            ("SELECT a::text FROM t", "SELECT a :: text FROM t"),
            ("SELECT $tag$ secret $tag$, $$x$$", "SELECT ?, ?"),
            ("SELECT f(a, b) FROM s.t;", "SELECT f(a, b) FROM s.t"),
            ("  SELECT\n\t1  /* comment */ -- trailing\n", "SELECT ?"),
            (
                "INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'), (3, 'z')",
                "INSERT INTO t (a, b) VALUES (?, ?)",
            ),
            (
                "SELECT * FROM t WHERE id IN ($1, $2, $3) AND k IN (SELECT id FROM u)",
                "SELECT * FROM t WHERE id IN (?) AND k IN (SELECT id FROM u)",
            ),
            ("SELECT E'a\\'b', N'x'", "SELECT ?, ?"),
            (
                "SELECT \"t\".\"c\" FROM \"users\" AS \"u\"",
                "SELECT ?.\"c\" FROM \"users\" AS \"u\"",
            ),
            (
                "SELECT a[1], ARRAY[2, 3] FROM t",
                "SELECT a[?], ARRAY[?, ?] FROM t",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_sql(input), want, "input: {input}");
        }
    }

    #[test]
    fn long_statements_are_cut() {
        let long = format!("SELECT {} FROM t", "col, ".repeat(2000));
        let n = normalize_sql(&long);
        assert!(n.len() <= MAX_STATEMENT_LEN + 4);
        assert!(n.ends_with('…'));
    }

    #[test]
    fn unterminated_inputs_do_not_panic() {
        for s in [
            "'abc",
            "/* x",
            "$a$ unterminated",
            "\"abc",
            "x'",
            "$",
            "?",
            ":",
            "@",
            "-",
            "0x",
        ] {
            let _ = normalize_sql(s);
        }
    }

    #[test]
    fn n_plus_one_needs_a_source_and_threshold() {
        let mut qs = vec![q("SELECT id FROM orders", 0.0, 1.0)];
        for i in 0..20 {
            qs.push(q(
                "SELECT * FROM items WHERE order_id = ?",
                1.0 + f64::from(i),
                0.5,
            ));
        }
        let f = n_plus_one(&qs, 5);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].count, 20);
        assert!((f[0].total_ms - 10.0).abs() < 1e-9);
        assert_eq!(f[0].source, "SELECT id FROM orders");
        // Without the source query: no finding.
        assert!(n_plus_one(&qs[1..], 5).is_empty());
        // Below the threshold: no finding.
        assert!(n_plus_one(&qs[..5], 5).is_empty());
        assert_eq!(n_plus_one(&qs[..6], 5).len(), 1);
        // Overlapping (concurrent) executions are not sequential.
        let concurrent: Vec<_> = std::iter::once(q("SELECT 1", 0.0, 1.0))
            .chain((0..10).map(|_| q("SELECT b", 1.0, 5.0)))
            .collect();
        assert!(n_plus_one(&concurrent, 5).is_empty());
        let groups = similar_groups(&qs);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].count, 20);
    }

    #[test]
    fn literals_of_every_dialect_are_hidden() {
        let cases = [
            // MySQL: a backslash escapes the quote.
            "SELECT * FROM u WHERE n = 'o\\'brien' OR api_key = 'sk_live_42'",
            // Standard PostgreSQL: the backslash is a character, the string ends there.
            "SELECT * FROM u WHERE p = 'C:\\' AND api_key = 'sk_live_42'",
            // MySQL and SQLite: "…" is a string.
            "SELECT * FROM u WHERE password = \"sk_live_42\"",
            "SELECT * FROM u WHERE x = ARRAY['sk_live_42']",
            "SELECT tags['sk_live_42'] FROM u",
            "SELECT * FROM u WHERE a = 0b1011 AND b = 4_111_111 AND c = 0x5ec12e7",
            "SELECT 1 /* outer /* inner */ sk_live_42 */ FROM u",
            "SELECT 1 FROM u # sk_live_42",
            "SELECT $q$sk_live_42$q$, $$sk_live_42$$",
        ];
        for sql in cases {
            let n = normalize_sql(sql);
            for secret in ["sk_live_42", "1011", "111", "5ec12e7", "brien"] {
                assert!(!n.contains(secret), "{sql} -> {n}");
            }
        }
        assert_eq!(
            normalize_sql("SELECT * FROM u WHERE a = 0b1011 AND b = 4_111_111"),
            "SELECT * FROM u WHERE a = ? AND b = ?"
        );
        assert_eq!(
            normalize_sql("SELECT a #> b, c #- d"),
            "SELECT a #> b, c #- d"
        );
    }

    /// A literal in one of the forms the three dialects accept, around `secret`.
    fn literal_forms(secret: &str, digits: &str) -> Vec<String> {
        vec![
            format!("'{secret}'"),
            format!("'o\\'{secret}'"),
            format!("'a\\' , {secret}, '"),
            format!("E'x\\'{secret}'"),
            format!("\"{secret}\""),
            format!("N'{secret}'"),
            format!("x'{digits}'"),
            format!("$z${secret}$z$"),
            format!("$$ {secret} $$"),
            format!("$t$ {secret} $t$"),
            format!("ARRAY['{secret}']"),
            format!("ARRAY[{digits}]"),
            format!("0b{}", digits.replace(|c: char| c > '1', "1")),
            format!("0x{digits}"),
            format!("{digits}_{digits}"),
            format!("{digits}.{digits}e-{digits}"),
            format!("-{digits}"),
            format!("/* {secret} */ 1"),
            format!("/* a /* b */ {secret} */ 1"),
            format!("1 -- {secret}\n"),
            format!("1 # {secret}\n"),
        ]
    }

    #[test]
    fn a_removed_comment_does_not_change_a_second_reading() {
        // Found by the `profiler_sql` fuzz target: `[`, a comment, then `V]`.
        let s = "@ [--<<<<\nV]>";
        let once = normalize_sql(s);
        assert_eq!(normalize_sql(&once), once);
    }

    proptest! {
        #[test]
        fn secret_literals_never_survive_in_any_position(
            secret in "[a-z]{3}QZX[a-z0-9]{4}",
            digits in "[2-9][0-9]{8}",
            form in 0usize..21,
            at in 0usize..8,
        ) {
            let lit = &literal_forms(&secret, &digits)[form];
            let positions = [
                format!("SELECT {lit} FROM t"),
                format!("SELECT a FROM t WHERE b = {lit}"),
                format!("SELECT a FROM t WHERE b IN ({lit}, {lit})"),
                format!("INSERT INTO t (a, b) VALUES ({lit}, 1), ({lit}, 2)"),
                format!("UPDATE t SET a = {lit} WHERE id = $1"),
                format!("SELECT f({lit}) FROM t ORDER BY 1 LIMIT {lit}"),
                format!("SELECT a FROM t WHERE b = {lit} AND c = 'z' AND d = {lit};"),
                format!("SELECT * FROM t WHERE b LIKE {lit} OR c = \"y\""),
            ];
            let sql = &positions[at];
            let n = normalize_sql(sql);
            prop_assert!(!n.contains("QZX"), "{} -> {}", sql, n);
            prop_assert!(!n.contains(&digits[..6]), "{} -> {}", sql, n);
            prop_assert_eq!(normalize_sql(&n), n.clone());
        }

        #[test]
        fn normalisation_is_idempotent(s in "\\PC{0,80}") {
            let once = normalize_sql(&s);
            prop_assert_eq!(normalize_sql(&once), once.clone());
        }

        #[test]
        fn normalisation_is_idempotent_on_sql_punctuation(s in "[-'\"`\\\\\\[\\]()$?:@.,;*/ abcinEeNxX0-9\n]{0,40}") {
            let once = normalize_sql(&s);
            prop_assert_eq!(normalize_sql(&once), once.clone());
        }

        #[test]
        fn literal_values_never_survive(v in 0u64..u64::MAX, word in "[a-z]{12,20}") {
            let a = normalize_sql(&format!("SELECT * FROM t WHERE id = {v} AND name = '{word}'"));
            prop_assert_eq!(&a, "SELECT * FROM t WHERE id = ? AND name = ?");
            prop_assert!(!a.contains(&word));
        }
    }
}
