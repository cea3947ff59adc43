//! Splitting CSV text into records: RFC 4180 quoting, a UTF-8 byte-order mark, LF, CRLF and
//! lone-CR line endings, blank lines skipped.

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
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut any_quoted = false;
    let mut line = 1;
    let mut record_line = 1;
    let mut chars = text.chars().peekable();

    let syntax = |line: usize, problem: String| DataError::CsvSyntax { path: path.to_path_buf(), line, problem };

    loop {
        // At the start of a field.
        if chars.peek() == Some(&'"') {
            chars.next();
            any_quoted = true;
            let quote_line = line;
            loop {
                match chars.next() {
                    None => {
                        return Err(syntax(
                            quote_line,
                            format!("field {} opens a quote (\") that is never closed", fields.len() + 1),
                        ))
                    }
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some('\n') => {
                        line += 1;
                        field.push('\n');
                    }
                    Some('\r') => {
                        if chars.peek() == Some(&'\n') {
                            chars.next();
                        }
                        line += 1;
                        field.push('\n');
                    }
                    Some(c) => field.push(c),
                }
            }
            match chars.peek() {
                None | Some(',') | Some('\n') | Some('\r') => {}
                Some(&c) => {
                    return Err(syntax(
                        line,
                        format!("field {} has the character '{c}' after its closing quote", fields.len() + 1),
                    ))
                }
            }
        }
        // The rest of an unquoted field (or the separator after a quoted one).
        let end_of_record;
        loop {
            match chars.next() {
                None => {
                    end_of_record = None;
                    break;
                }
                Some(',') => {
                    end_of_record = Some(false);
                    break;
                }
                Some('\n') => {
                    end_of_record = Some(true);
                    break;
                }
                Some('\r') => {
                    if chars.peek() == Some(&'\n') {
                        chars.next();
                    }
                    end_of_record = Some(true);
                    break;
                }
                Some(c) => field.push(c),
            }
        }
        fields.push(std::mem::take(&mut field));
        match end_of_record {
            Some(false) => {}
            Some(true) | None => {
                let blank = !any_quoted && fields.len() == 1 && fields[0].trim().is_empty();
                if !blank {
                    records.push(Record { line: record_line, fields: std::mem::take(&mut fields) });
                }
                fields.clear();
                any_quoted = false;
                if end_of_record.is_none() {
                    break;
                }
                line += 1;
                record_line = line;
            }
        }
    }
    Ok(records)
}
