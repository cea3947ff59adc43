//! Splitting CSV text into records with the `csv` crate: RFC 4180 quoting, LF, CRLF and
//! lone-CR line endings (a line break inside a quoted field reads as `\n`), blank lines
//! skipped, one UTF-8 byte-order mark dropped.
//!
//! Two things stay here. The line a record starts on is counted from its byte offset, because
//! the crate counts only `\n` (a file with lone-CR endings would be "line 1" throughout). And
//! the crate reads a quote left open to the end of the file, or text after a closing quote, as
//! data; in a data file both are mistakes that shift every later column, so a record that
//! holds a quote is checked for them ([`check_quotes`]) and the error names the line.

use std::path::Path;

use crate::error::DataError;

/// One record of a CSV file: the line it starts on and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) line: usize,
    pub(crate) fields: Vec<String>,
}

/// Split CSV text into records (RFC 4180 quoting). Blank lines are skipped.
pub(crate) fn parse_records(path: &Path, text: &str) -> Result<Vec<Record>, DataError> {
    // The crate drops one byte-order mark itself but counts its bytes in its positions; a
    // record never starts inside it.
    let bom = if text.starts_with('\u{feff}') { '\u{feff}'.len_utf8() } else { 0 };
    let syntax = |line: usize, problem: String| DataError::CsvSyntax { path: path.to_path_buf(), line, problem };
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(text.as_bytes());
    let mut lines = Lines { text, at: 0, line: 1 };
    let mut records = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        let start = reader.position().byte() as usize;
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(syntax(lines.at(start), e.to_string())),
        }
        // The crate skips the empty lines before a record, and its position is before them.
        let end = (reader.position().byte() as usize).min(text.len());
        let start = start.max(bom);
        let start = start + text.as_bytes()[start..end].iter().take_while(|&&b| b == b'\n' || b == b'\r').count();
        let line = lines.at(start);
        let raw = &text[start..end];
        let quoted = raw.contains('"');
        if quoted {
            check_quotes(raw).map_err(|(below, problem)| syntax(line + below, problem))?;
        }
        let blank = !quoted && record.len() == 1 && record[0].trim().is_empty();
        if !blank {
            records.push(Record { line, fields: record.iter().map(one_line_ending).collect() });
        }
    }
    Ok(records)
}

/// A field with its line breaks (`\r\n`, `\r`) written as `\n`, so that a file reads the same
/// whatever line endings an editor gave it.
fn one_line_ending(field: &str) -> String {
    if field.contains('\r') {
        field.replace("\r\n", "\n").replace('\r', "\n")
    } else {
        field.to_string()
    }
}

/// Line numbers of byte offsets, asked in increasing order: `\n`, `\r\n` and a lone `\r` each
/// end a line.
struct Lines<'a> {
    text: &'a str,
    at: usize,
    line: usize,
}

impl Lines<'_> {
    fn at(&mut self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        if offset > self.at {
            self.line += breaks(&self.text.as_bytes()[self.at..offset]);
            self.at = offset;
        }
        self.line
    }
}

/// The line breaks in `bytes` (a `\r\n` is one).
fn breaks(bytes: &[u8]) -> usize {
    let mut n = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n')) {
            n += 1;
        }
    }
    n
}

/// In one record's text (its terminator included): a quoted field must close, and only a
/// comma or the end of the record may follow its closing quote. An error is the number of
/// lines below the record's first line, and the problem.
fn check_quotes(raw: &str) -> Result<(), (usize, String)> {
    let b = raw.as_bytes();
    let (mut i, mut field) = (0, 1);
    while i < b.len() {
        if b[i] == b'"' {
            let open = i;
            i += 1;
            loop {
                match b.get(i) {
                    None => {
                        return Err((
                            breaks(&b[..open]),
                            format!("field {field} opens a quote (\") that is never closed"),
                        ))
                    }
                    Some(b'"') if b.get(i + 1) == Some(&b'"') => i += 2,
                    Some(b'"') => break,
                    Some(_) => i += 1,
                }
            }
            i += 1;
            if let Some(c) = raw[i..].chars().next().filter(|c| !matches!(c, ',' | '\n' | '\r')) {
                return Err((
                    breaks(&b[..i]),
                    format!("field {field} has the character '{c}' after its closing quote"),
                ));
            }
        }
        // The rest of the field, then a comma or the end of the record.
        while i < b.len() && !matches!(b[i], b',' | b'\n' | b'\r') {
            i += 1;
        }
        if i >= b.len() || b[i] != b',' {
            return Ok(());
        }
        i += 1;
        field += 1;
    }
    Ok(())
}
