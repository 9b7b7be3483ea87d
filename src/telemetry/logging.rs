//! Log lines on stderr: text for people, JSON for collectors; `HUBRELAY_LOG` filters both.

use tracing_subscriber::EnvFilter;

/// The environment variable holding the log filter (`tracing_subscriber` `EnvFilter` syntax,
/// e.g. `info,hubrelay::node=debug`). Default: `info`.
pub const FILTER_VAR: &str = "HUBRELAY_LOG";

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, with the event's fields and those of the spans it is in
    /// (message id, storage group, node, epoch where a span has them), for log collectors.
    Json,
}

impl LogFormat {
    /// The value as given on the command line (`--log-format`).
    pub fn as_arg(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Installs the process's log subscriber (once; later calls change nothing). A `HUBRELAY_LOG`
/// that does not parse is reported and `info` is used, rather than logging nothing.
pub fn init(format: LogFormat) {
    let (filter, bad) = match std::env::var(FILTER_VAR) {
        Ok(spec) => match EnvFilter::try_new(&spec) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new("info"), Some(format!("{spec:?}: {e}"))),
        },
        Err(_) => (EnvFilter::new("info"), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
    if let (Ok(()), Some(bad)) = (installed, bad) {
        tracing::warn!("{FILTER_VAR} is not a valid filter ({bad}); logging at info");
    }
}
