//! `failsmall codex check PATH...`: the Codex over a repository of unit specs and plans, for CI.
//!
//! Files are found by walking each path (directories recursively, hidden ones and `target/`
//! skipped) and sorted by what they hold: a YAML or JSON mapping with `stages` is a plan, one
//! with `format` and `max_bytes` a unit spec; anything else is left alone. A unit spec
//! `NAME.spec.yaml` with a plan `NAME.plan.yaml` beside it is judged with that plan, as a push
//! of the unit would be; every other file is judged alone. Plans are analysed over a fleet file
//! (default: `examples/fleet.yaml`, built in). Each finding names the file, and the line and
//! column of the field the rule names.

use std::path::{Path, PathBuf};

use failsmall_core::plan::Plan;
use failsmall_core::validate::UnitSpec;
use failsmall_core::yaml::{self, YamlKind, YamlNode};
use failsmall_sim::FleetSpec;
use serde::Serialize;
use serde_json::Value;

use crate::input::{Action, FleetInput, Input, RuleConfig, UnitInput};
use crate::{Codex, CodexError, Finding, Severity, Subject};

/// Largest spec or plan file read.
pub const FILE_MAX_BYTES: u64 = 1 << 20;
/// Most files one check reads.
pub const FILES_MAX: usize = 10_000;
/// Deepest directory walked.
const DEPTH_MAX: usize = 32;

/// The fleet `plan check` uses when none is given.
pub const BUILT_IN_FLEET: &str = include_str!("../../../examples/fleet.yaml");
pub const BUILT_IN_FLEET_NAME: &str = "examples/fleet.yaml (built in)";

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    UnitSpec,
    Plan,
}

/// One file the check read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckedFile {
    pub file: String,
    pub kind: FileKind,
}

/// What `codex check` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    pub files: Vec<CheckedFile>,
    pub findings: Vec<Finding>,
    /// Files that look like a spec or a plan but do not load, each `file:line:column: ...`.
    pub errors: Vec<String>,
    pub fleet: String,
}

impl CheckReport {
    pub fn denied(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Deny)
            .count()
    }

    pub fn warned(&self) -> usize {
        self.findings.len() - self.denied()
    }
}

/// Reads a fleet file (or a scenario's `fleet:` section) into nodes.
pub fn fleet_from_file(name: &str, text: &str) -> Result<FleetInput, CodexError> {
    let spec = FleetSpec::parse(name, text).map_err(|error| CodexError::Load {
        file: name.to_owned(),
        message: error.to_string(),
    })?;
    let built = spec.build(0).map_err(|error| CodexError::Load {
        file: name.to_owned(),
        message: error.to_string(),
    })?;
    Ok(FleetInput {
        source: name.to_owned(),
        nodes: built.nodes,
        traffic_weight: built.traffic_weight,
    })
}

/// The built-in fleet of `plan check`.
pub fn built_in_fleet() -> Result<FleetInput, CodexError> {
    fleet_from_file(BUILT_IN_FLEET_NAME, BUILT_IN_FLEET)
}

struct Loaded {
    file: String,
    tree: YamlNode,
    json: Value,
}

/// Runs `codex` over every spec and plan under `paths`.
pub fn check_paths(
    codex: &Codex,
    paths: &[PathBuf],
    fleet: &FleetInput,
    config: &RuleConfig,
) -> Result<CheckReport, CodexError> {
    let mut files = Vec::new();
    for path in paths {
        walk(path, 0, &mut files)?;
    }
    files.sort();
    files.dedup();
    let mut report = CheckReport {
        files: Vec::new(),
        findings: Vec::new(),
        errors: Vec::new(),
        fleet: fleet.source.clone(),
    };
    let mut units: Vec<(Loaded, UnitSpec)> = Vec::new();
    let mut plans: Vec<(Loaded, Plan)> = Vec::new();
    for path in &files {
        let Some((loaded, kind)) = load(path)? else {
            continue;
        };
        match kind {
            FileKind::UnitSpec => match serde_json::from_value::<UnitSpec>(loaded.json.clone()) {
                Ok(spec) => match spec.check() {
                    Ok(()) => units.push((loaded, spec)),
                    Err(errors) => report.errors.extend(
                        errors
                            .iter()
                            .map(|error| format!("{}: unit spec: {error}", loaded.file)),
                    ),
                },
                Err(error) => report
                    .errors
                    .push(format!("{}: unit spec: {error}", loaded.file)),
            },
            FileKind::Plan => match Plan::parse(&loaded.file, &yaml_text(path)?) {
                Ok(plan) => plans.push((loaded, plan)),
                Err(errors) => report
                    .errors
                    .extend(errors.errors.iter().map(ToString::to_string)),
            },
        }
    }
    let mut paired_plans = Vec::new();
    for (unit, spec) in &units {
        let name = unit_name(&unit.file);
        let plan = plans
            .iter()
            .position(|(plan, _)| is_plan_of(&unit.file, &plan.file));
        let mut input = Input::new(Action::Check);
        input.unit = Some(UnitInput::new(&name, spec, Some(&unit.json)));
        input.fleet = fleet.clone();
        input.config = config.clone();
        if let Some(index) = plan {
            paired_plans.push(index);
            if let Some((_, parsed)) = plans.get(index) {
                input.plan = Some(parsed.clone());
            }
        }
        let plan_file = plan.and_then(|index| plans.get(index)).map(|(l, _)| l);
        report.files.push(CheckedFile {
            file: unit.file.clone(),
            kind: FileKind::UnitSpec,
        });
        for finding in codex.evaluate(&input)? {
            report.findings.push(locate(finding, Some(unit), plan_file));
        }
    }
    for (index, (loaded, plan)) in plans.iter().enumerate() {
        report.files.push(CheckedFile {
            file: loaded.file.clone(),
            kind: FileKind::Plan,
        });
        if paired_plans.contains(&index) {
            continue;
        }
        let mut input = Input::new(Action::Check);
        input.plan = Some(plan.clone());
        input.fleet = fleet.clone();
        input.config = config.clone();
        for finding in codex.evaluate(&input)? {
            report.findings.push(locate(finding, None, Some(loaded)));
        }
    }
    report.files.sort_by(|a, b| a.file.cmp(&b.file));
    report.findings.sort_by(|a, b| {
        (&a.file, a.line, b.severity, &a.rule).cmp(&(&b.file, b.line, a.severity, &b.rule))
    });
    Ok(report)
}

fn walk(path: &Path, depth: usize, files: &mut Vec<PathBuf>) -> Result<(), CodexError> {
    let shown = path.display().to_string();
    let metadata = std::fs::metadata(path).map_err(|error| CodexError::Load {
        file: shown.clone(),
        message: error.to_string(),
    })?;
    if metadata.is_file() {
        if files.len() >= FILES_MAX {
            return Err(CodexError::Load {
                file: shown,
                message: format!("more than {FILES_MAX} files to check"),
            });
        }
        files.push(path.to_owned());
        return Ok(());
    }
    if depth >= DEPTH_MAX {
        return Ok(());
    }
    let entries = std::fs::read_dir(path).map_err(|error| CodexError::Load {
        file: shown.clone(),
        message: error.to_string(),
    })?;
    let mut children = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| CodexError::Load {
            file: shown.clone(),
            message: error.to_string(),
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        let child = entry.path();
        let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
        let readable = matches!(
            child.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        );
        if is_dir || readable {
            children.push(child);
        }
    }
    children.sort();
    for child in children {
        walk(&child, depth + 1, files)?;
    }
    Ok(())
}

fn yaml_text(path: &Path) -> Result<String, CodexError> {
    let shown = path.display().to_string();
    let size = std::fs::metadata(path)
        .map_err(|error| CodexError::Load {
            file: shown.clone(),
            message: error.to_string(),
        })?
        .len();
    if size > FILE_MAX_BYTES {
        return Err(CodexError::Load {
            file: shown,
            message: format!("{size} bytes; the limit is {FILE_MAX_BYTES}"),
        });
    }
    std::fs::read_to_string(path).map_err(|error| CodexError::Load {
        file: shown,
        message: error.to_string(),
    })
}

/// Reads a file that may be a spec or a plan; `None` when it is neither (or, for a file given
/// by a directory walk, does not parse as YAML: data files are not ours to judge).
fn load(path: &Path) -> Result<Option<(Loaded, FileKind)>, CodexError> {
    let file = path.display().to_string();
    let text = match yaml_text(path) {
        Ok(text) => text,
        Err(CodexError::Load { message, .. }) if message.contains("the limit is") => {
            return Ok(None);
        }
        Err(error) => return Err(error),
    };
    let Ok(tree) = yaml::load(&text) else {
        return Ok(None);
    };
    let YamlKind::Mapping(entries) = &tree.kind else {
        return Ok(None);
    };
    let has = |key: &str| {
        entries
            .iter()
            .any(|(k, _)| matches!(&k.kind, YamlKind::Scalar { text, .. } if text == key))
    };
    let kind = if has("stages") {
        FileKind::Plan
    } else if has("format") && has("max_bytes") {
        FileKind::UnitSpec
    } else {
        return Ok(None);
    };
    let json = tree.to_json();
    Ok(Some((Loaded { file, tree, json }, kind)))
}

/// `dir/bot-features.spec.yaml` → `bot-features`.
fn unit_name(file: &str) -> String {
    let base = Path::new(file)
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = base.split('.').next().unwrap_or_default();
    if stem.is_empty() {
        "unit".to_owned()
    } else {
        stem.to_owned()
    }
}

/// Whether `plan` is `NAME.plan.*` beside the unit spec `NAME.spec.*`.
fn is_plan_of(unit: &str, plan: &str) -> bool {
    let (unit, plan) = (Path::new(unit), Path::new(plan));
    let name = |path: &Path, kind: &str| {
        let base = path.file_name()?.to_string_lossy().into_owned();
        let mut parts = base.splitn(3, '.');
        let stem = parts.next()?.to_owned();
        (parts.next()? == kind).then_some(stem)
    };
    unit.parent() == plan.parent()
        && name(unit, "spec").is_some()
        && name(unit, "spec") == name(plan, "plan")
}

/// Puts the finding on the file its subject names, at the line of its field.
fn locate(mut finding: Finding, unit: Option<&Loaded>, plan: Option<&Loaded>) -> Finding {
    let target = match finding.subject {
        Subject::Unit => unit.or(plan),
        Subject::Plan => plan.or(unit),
        Subject::Request => plan.or(unit),
    };
    if let Some(loaded) = target {
        let node = finding
            .field
            .as_deref()
            .map_or(&loaded.tree, |field| find_field(&loaded.tree, field));
        finding.file = Some(loaded.file.clone());
        finding.line = Some(node.line.max(1));
        finding.column = Some(node.column.max(1));
    }
    finding
}

/// The node of a dotted field path (`stages[1].gates`), or its deepest ancestor present; a
/// mapping key's own position when the path ends at a key.
pub fn find_field<'n>(root: &'n YamlNode, field: &str) -> &'n YamlNode {
    let mut node = root;
    for segment in field.split('.') {
        let (key, indexes) = match segment.split_once('[') {
            Some((key, rest)) => (key, Some(rest)),
            None => (segment, None),
        };
        if !key.is_empty() {
            let YamlKind::Mapping(entries) = &node.kind else {
                return node;
            };
            let Some((key_node, value)) = entries
                .iter()
                .find(|(k, _)| matches!(&k.kind, YamlKind::Scalar { text, .. } if text == key))
            else {
                return node;
            };
            node = if indexes.is_none() && !matches!(value.kind, YamlKind::Mapping(_)) {
                key_node
            } else {
                value
            };
        }
        if let Some(indexes) = indexes {
            for index in indexes.split('[') {
                let Ok(index) = index.trim_end_matches(']').parse::<usize>() else {
                    return node;
                };
                let YamlKind::Sequence(items) = &node.kind else {
                    return node;
                };
                let Some(item) = items.get(index) else {
                    return node;
                };
                node = item;
            }
        }
    }
    node
}

/// The report for people: one line per finding, `file:line:column: severity rule: message`,
/// then the rule's sentence and link.
pub fn text(report: &CheckReport) -> String {
    let mut out = String::new();
    for error in &report.errors {
        out.push_str(&format!("error: {error}\n"));
    }
    for finding in &report.findings {
        let place = match (&finding.file, finding.line, finding.column) {
            (Some(file), Some(line), Some(column)) => format!("{file}:{line}:{column}: "),
            (Some(file), _, _) => format!("{file}: "),
            _ => String::new(),
        };
        out.push_str(&format!(
            "{place}{} {}: {}\n    {}\n    see {}\n",
            finding.severity.as_str(),
            finding.rule,
            finding.message,
            finding.sentence,
            finding.link
        ));
    }
    out.push_str(&format!(
        "{} files checked, plans analysed over {}: {} denied, {} warned, {} errors\n",
        report.files.len(),
        report.fleet,
        report.denied(),
        report.warned(),
        report.errors.len()
    ));
    out
}
