//! SARIF 2.1.0 (OASIS Static Analysis Results Interchange Format) for `codex check`, so that
//! code-scanning UIs show each finding on its file and line. One run; the driver lists every
//! rule of the Codex (id, sentence, link, default level); each result names its rule, level
//! (`error` for deny, `warning` for warn), message and location.

use serde_json::{Value, json};

use crate::offline::CheckReport;
use crate::{Codex, Severity};

pub const SARIF_SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";
const INFORMATION_URI: &str = "https://github.com/failsmall/failsmall";

fn level(severity: Severity) -> &'static str {
    match severity {
        Severity::Deny => "error",
        Severity::Warn => "warning",
    }
}

/// A file path as a SARIF artifact URI: relative paths stay relative (to the repository root
/// a code-scanning upload resolves them against), with `/` separators; absolute ones become
/// `file://` URIs.
fn artifact_uri(file: &str) -> String {
    let slashed = file.replace('\\', "/");
    let trimmed = slashed.strip_prefix("./").unwrap_or(&slashed);
    let encoded: String = trimmed
        .chars()
        .map(|c| match c {
            ' ' => "%20".to_owned(),
            '#' => "%23".to_owned(),
            '?' => "%3F".to_owned(),
            '%' => "%25".to_owned(),
            c => c.to_string(),
        })
        .collect();
    if encoded.starts_with('/') {
        format!("file://{encoded}")
    } else {
        encoded
    }
}

/// The SARIF log of a check.
pub fn sarif(codex: &Codex, report: &CheckReport) -> Value {
    let rules: Vec<Value> = codex
        .rules()
        .iter()
        .map(|rule| {
            let mut descriptor = json!({
                "id": rule.id,
                "name": rule.id,
                "shortDescription": { "text": rule.sentence },
                "fullDescription": { "text": format!("{} See {}.", rule.sentence, rule.link) },
                "help": { "text": format!("{}\nWhy: {}", rule.sentence, rule.link) },
                "defaultConfiguration": { "level": level(rule.severity) },
                "properties": { "starter": rule.starter, "file": rule.file },
            });
            if (rule.link.starts_with("https://") || rule.link.starts_with("http://"))
                && let Some(object) = descriptor.as_object_mut()
            {
                object.insert("helpUri".to_owned(), json!(rule.link));
            }
            descriptor
        })
        .collect();
    let results: Vec<Value> = report
        .findings
        .iter()
        .map(|finding| {
            let mut result = json!({
                "ruleId": finding.rule,
                "level": level(finding.severity),
                "message": {
                    "text": format!("{} — {} ({})", finding.message, finding.sentence, finding.link),
                },
            });
            if let Some(index) = codex.rules().iter().position(|rule| rule.id == finding.rule)
                && let Some(object) = result.as_object_mut()
            {
                object.insert("ruleIndex".to_owned(), json!(index));
            }
            if let (Some(file), Some(object)) = (&finding.file, result.as_object_mut()) {
                let mut physical = json!({ "artifactLocation": { "uri": artifact_uri(file) } });
                if let (Some(line), Some(column), Some(location)) =
                    (finding.line, finding.column, physical.as_object_mut())
                {
                    location.insert(
                        "region".to_owned(),
                        json!({ "startLine": line, "startColumn": column }),
                    );
                }
                object.insert(
                    "locations".to_owned(),
                    json!([{ "physicalLocation": physical }]),
                );
            }
            result
        })
        .collect();
    let notifications: Vec<Value> = report
        .errors
        .iter()
        .map(|error| json!({ "level": "error", "message": { "text": error } }))
        .collect();
    json!({
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {
                "driver": {
                    "name": "failsmall codex",
                    "informationUri": INFORMATION_URI,
                    "version": env!("CARGO_PKG_VERSION"),
                    "rules": rules,
                }
            },
            "invocations": [{
                "executionSuccessful": report.errors.is_empty(),
                "toolExecutionNotifications": notifications,
            }],
            "results": results,
        }]
    })
}
