//! Programs built on the roles, above the process wiring and below the command line: a private
//! site of four processes of this binary ([`private_site`]), the narrated failover [`demo`] and
//! the sizing [`bench`]. Each prints its own progress and report; the CLI maps its error to an exit
//! status.

pub mod bench;
pub mod demo;
pub mod private_site;

/// Why a program did not succeed, by the exit status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    /// Bad usage (exit 2): an option out of range.
    #[error("{0}")]
    Usage(String),
    /// The run failed or found mail lost or doubled (exit 1).
    #[error("{0}")]
    Failed(String),
}

/// Prints `value` as one JSON document (`--json`).
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<(), ProgramError> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| ProgramError::Failed(e.to_string()))?;
    println!("{text}");
    Ok(())
}
