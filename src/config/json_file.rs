//! Reading and rewriting the JSON files people edit by hand.
//!
//! Two promises: a malformed file is an error that names the file, the line
//! and the field; and a rewrite keeps every field this version of scout does
//! not know, so a newer scout's settings (or a person's notes) survive an
//! older scout's `setup`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A config file that cannot be used as it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid JSON, or a field has the wrong type or value.
    #[error("{}:{line}:{column}: {}{message}", path.display(), field_prefix(field))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending text (1 when unknown).
        line: usize,
        /// 1-based column (1 when unknown).
        column: usize,
        /// Dotted path of the field (`discovery.mdns`, `agents[2].command`),
        /// empty for syntax errors.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The file could not be read or written.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl ConfigError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            ConfigError::Invalid { .. } => "CONFIG_INVALID",
            ConfigError::Io { .. } => "CONFIG_IO",
        }
    }

    /// An error about one field's value, located in the file's text.
    pub fn field(path: &Path, text: &str, field: &str, message: impl Into<String>) -> ConfigError {
        let (line, column) = locate_field(text, field);
        ConfigError::Invalid {
            path: path.to_owned(),
            line,
            column,
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("field `{field}`: ")
    }
}

/// The file's bytes as text, or an error at the first byte that is not
/// UTF-8 (JSON files are UTF-8; a stray byte is an editing mistake).
fn text_of(path: &Path, bytes: Vec<u8>) -> Result<String, ConfigError> {
    String::from_utf8(bytes).map_err(|err| {
        let valid = &err.as_bytes()[..err.utf8_error().valid_up_to()];
        // `valid` is UTF-8 by construction.
        let before = std::str::from_utf8(valid).unwrap_or_default();
        let line = before.matches('\n').count() + 1;
        let column = before
            .rsplit('\n')
            .next()
            .map_or(0, |tail| tail.chars().count())
            + 1;
        ConfigError::Invalid {
            path: path.to_owned(),
            line,
            column,
            field: String::new(),
            message: "invalid UTF-8; JSON files must be UTF-8".to_owned(),
        }
    })
}

/// A loaded JSON file: its typed value, plus the original document so a
/// rewrite keeps what the type does not model.
#[derive(Debug, Clone)]
pub struct JsonFile<T> {
    /// Where it lives.
    pub path: PathBuf,
    /// The typed content.
    pub value: T,
    /// The file's text when it was loaded (for locating fields in errors).
    pub text: String,
    original: Option<Value>,
}

/// Whether a save wrote anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// The file did not exist and was created.
    Created,
    /// The file changed.
    Updated,
    /// The content was already what it should be; nothing was written.
    Unchanged,
}

impl<T: Serialize + DeserializeOwned> JsonFile<T> {
    /// Loads the file; `Ok(None)` when it does not exist.
    pub fn load(path: &Path) -> Result<Option<JsonFile<T>>, ConfigError> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            // A directory where the file should be is a mistake in the
            // configuration, not a failure to read: say so as one.
            Err(_) if path.is_dir() => {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    line: 1,
                    column: 1,
                    field: String::new(),
                    message: "is a directory; expected a JSON file".to_owned(),
                });
            }
            Err(source) => {
                return Err(ConfigError::Io {
                    action: "read",
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let text = text_of(path, bytes)?;
        let value = parse_typed::<T>(path, &text)?;
        // The typed parse succeeded, so the text is valid JSON.
        let original = serde_json::from_str::<Value>(&text).ok();
        Ok(Some(JsonFile {
            path: path.to_owned(),
            value,
            text,
            original,
        }))
    }

    /// A file that does not exist yet, holding `value`.
    pub fn new(path: &Path, value: T) -> JsonFile<T> {
        JsonFile {
            path: path.to_owned(),
            value,
            text: String::new(),
            original: None,
        }
    }

    /// Loads the file, or starts from `default()` when it does not exist.
    pub fn load_or(path: &Path, default: impl FnOnce() -> T) -> Result<JsonFile<T>, ConfigError> {
        Ok(match JsonFile::load(path)? {
            Some(file) => file,
            None => JsonFile::new(path, default()),
        })
    }

    /// Writes the value back, keeping unknown fields; writes nothing when the
    /// bytes would not change. The write is atomic (temp file and rename).
    pub fn save(&mut self) -> Result<Saved, ConfigError> {
        let io_error = |source| ConfigError::Io {
            action: "write",
            path: self.path.clone(),
            source,
        };
        let typed = serde_json::to_value(&self.value)
            .map_err(|err| io_error(std::io::Error::other(err)))?;
        let merged = match &self.original {
            Some(original) => merge_keeping_unknown(original.clone(), typed),
            None => typed,
        };
        let mut text = serde_json::to_string_pretty(&merged)
            .map_err(|err| io_error(std::io::Error::other(err)))?;
        text.push('\n');
        let existed = self.path.exists();
        if existed && fs::read_to_string(&self.path).ok().as_deref() == Some(text.as_str()) {
            return Ok(Saved::Unchanged);
        }
        write_atomically(&self.path, text.as_bytes()).map_err(io_error)?;
        self.original = Some(merged);
        self.text = text;
        Ok(if existed {
            Saved::Updated
        } else {
            Saved::Created
        })
    }
}

/// Parses `text` as `T`, turning any failure into an error with the file,
/// line, column and field path.
pub fn parse_typed<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize::<_, T>(&mut deserializer).map_err(|err| {
        let field = err.path().to_string();
        let inner = err.into_inner();
        ConfigError::Invalid {
            path: path.to_owned(),
            line: inner.line().max(1),
            column: inner.column().max(1),
            field: if field == "." { String::new() } else { field },
            message: strip_position(&inner.to_string()),
        }
    })?;
    deserializer.end().map_err(|err| ConfigError::Invalid {
        path: path.to_owned(),
        line: err.line().max(1),
        column: err.column().max(1),
        field: String::new(),
        message: strip_position(&err.to_string()),
    })?;
    Ok(value)
}

/// serde_json appends " at line L column C"; the error prints those itself.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(idx) => message[..idx].to_owned(),
        None => message.to_owned(),
    }
}

/// Overlays the typed document on the original one. Objects merge key by
/// key, so unknown keys stay. Arrays of objects merge element by element when
/// both sides name their elements with the same `name`, so an agent entry
/// keeps its unknown fields; anything else takes the typed value.
pub fn merge_keeping_unknown(original: Value, typed: Value) -> Value {
    match (original, typed) {
        (Value::Object(mut original), Value::Object(typed)) => {
            for (key, typed_value) in typed {
                // Merged in place, so the file keeps its key order.
                match original.get_mut(&key) {
                    Some(slot) => {
                        let original_value = std::mem::take(slot);
                        *slot = merge_keeping_unknown(original_value, typed_value);
                    }
                    None => {
                        original.insert(key, typed_value);
                    }
                }
            }
            Value::Object(original)
        }
        (Value::Array(original), Value::Array(typed)) => Value::Array(
            typed
                .into_iter()
                .map(|typed_item| {
                    let name = typed_item.get("name").and_then(Value::as_str);
                    let matching = name.and_then(|name| {
                        original
                            .iter()
                            .find(|item| item.get("name").and_then(Value::as_str) == Some(name))
                    });
                    match matching {
                        Some(original_item) => {
                            merge_keeping_unknown(original_item.clone(), typed_item)
                        }
                        None => typed_item,
                    }
                })
                .collect(),
        ),
        (_, typed) => typed,
    }
}

/// Finds the line and column of a dotted field path's last key in `text`
/// (best effort: the first `"key"` followed by `:`), for errors about values
/// that are well-typed but not acceptable.
pub fn locate_field(text: &str, field: &str) -> (usize, usize) {
    let last_key = field
        .rsplit('.')
        .next()
        .map(|key| key.split('[').next().unwrap_or(key))
        .unwrap_or(field);
    let needle = format!("\"{last_key}\"");
    let mut search_from = 0;
    while let Some(found) = text[search_from..].find(&needle) {
        let at = search_from + found;
        let after = text[at + needle.len()..].trim_start();
        if after.starts_with(':') {
            let line = text[..at].matches('\n').count() + 1;
            let column = at - text[..at].rfind('\n').map_or(0, |nl| nl + 1) + 1;
            return (line, column);
        }
        search_from = at + needle.len();
    }
    (1, 1)
}

/// Writes through a temporary file in the same directory and renames it
/// over the target, so a crash never leaves a half-written config. The
/// file is owner-only (0600) from its first byte, and a directory made
/// for it owner-only (0700): config files decide what the broker runs.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(crate::home::HOME_DIR_MODE)
        .create(dir)?;
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp_path = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(crate::home::HOME_FILE_MODE)
        .open(&temp_path)?;
    // A temp file left by a crash keeps its old mode: set it again.
    file.set_permissions(fs::Permissions::from_mode(crate::home::HOME_FILE_MODE))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temp_path, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Sample {
        port: u16,
        #[serde(default)]
        items: Vec<Item>,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Item {
        name: String,
        size: u32,
    }

    #[test]
    fn type_error_names_file_line_and_field() {
        let text =
            "{\n  \"port\": 1,\n  \"items\": [\n    {\"name\": \"a\", \"size\": \"big\"}\n  ]\n}";
        let err = parse_typed::<Sample>(Path::new("/x/sample.json"), text).unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("/x/sample.json:4:"), "{message}");
        assert!(message.contains("field `items[0].size`"), "{message}");
    }

    #[test]
    fn invalid_utf8_and_a_directory_are_config_errors_with_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sample.json");
        std::fs::write(&path, b"{\n  \"port\": 1,\n  \"x\": \"\xff\"\n}").unwrap();
        let err = JsonFile::<Sample>::load(&path).unwrap_err();
        assert_eq!(err.code(), "CONFIG_INVALID");
        assert!(
            err.to_string().contains("sample.json:3:9: invalid UTF-8"),
            "{err}"
        );

        let as_dir = dir.path().join("dir.json");
        std::fs::create_dir(&as_dir).unwrap();
        let err = JsonFile::<Sample>::load(&as_dir).unwrap_err();
        assert_eq!(err.code(), "CONFIG_INVALID");
        assert!(
            err.to_string().contains("dir.json:1:1: is a directory"),
            "{err}"
        );
    }

    #[test]
    fn syntax_error_has_a_line() {
        let err = parse_typed::<Sample>(Path::new("s.json"), "{\n\"port\": 1,\n}").unwrap_err();
        assert!(err.to_string().starts_with("s.json:3:1: "), "{err}");
    }

    #[test]
    fn merge_keeps_unknown_fields_at_every_level() {
        let original =
            json!({"port": 1, "note": "keep", "items": [{"name": "a", "size": 1, "color": "red"}]});
        let typed =
            json!({"port": 2, "items": [{"name": "a", "size": 5}, {"name": "b", "size": 1}]});
        let merged = merge_keeping_unknown(original, typed);
        assert_eq!(
            merged,
            json!({"port": 2, "note": "keep", "items": [{"name": "a", "size": 5, "color": "red"}, {"name": "b", "size": 1}]})
        );
        let keys: Vec<&String> = merged.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["port", "note", "items"], "key order is kept");
    }

    #[test]
    fn locate_field_finds_the_key() {
        let text = "{\n  \"a\": 1,\n  \"node_name\": \"x\"\n}";
        assert_eq!(locate_field(text, "node_name"), (3, 3));
        assert_eq!(locate_field(text, "missing"), (1, 1));
    }
}
