//! `[log]`: the level, where lines go and their format.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, Ctx};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct LogFile {
    level: String,
    file: Option<String>,
    format: String,
}

impl Default for LogFile {
    fn default() -> Self {
        LogFile { level: "info".into(), file: None, format: "text".into() }
    }
}

/// `log.format`: how each event is written (always one line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `timestamp LEVEL target: message field=value …`, for people.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields with the message), for
    /// log collectors.
    Json,
}

/// `[log]`, validated.
pub(super) struct Log {
    pub level: String,
    pub file: Option<PathBuf>,
    pub format: LogFormat,
}

impl LogFile {
    pub(super) fn validate(self, cx: &Ctx) -> Result<Log, ConfigError> {
        if !matches!(self.level.as_str(), "error" | "warn" | "info" | "debug" | "trace") {
            return Err(cx.bad("log.level", format!("{:?} is not one of error, warn, info, debug, trace", self.level)));
        }
        let format = match self.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(cx.bad("log.format", format!("{other:?} is not one of text, json"))),
        };
        Ok(Log { level: self.level, file: self.file.as_deref().map(|p| cx.resolve(p)), format })
    }
}
