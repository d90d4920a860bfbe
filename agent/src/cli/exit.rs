//! Exit codes beyond 0 (success) and 1 (an error: bad input, output failed); clap uses 2 for
//! a wrong command line.

/// Some agents did not answer: the output is the others' answer, marked incomplete.
pub const PARTIAL: u8 = 3;
/// No agent answered.
pub const NO_ANSWER: u8 = 4;
/// The cluster could not be asked: no usable kubeconfig or context, the API server
/// unreachable, or RBAC denies what the command needs.
pub const CLUSTER: u8 = 5;
/// The pod asked about does not exist (and left no trace inside `--since`).
pub const NOT_FOUND: u8 = 6;

/// An outcome that is not plain success or failure: printed as one line on stderr, exits with
/// `code`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: u8,
    pub message: String,
}
