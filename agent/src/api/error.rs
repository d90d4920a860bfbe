//! The one place errors become gRPC codes.

use tonic::Status;

use crate::codec::ConvertError;
use crate::store::{StoreGone, SubscribeError};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request: {0}")]
    InvalidArgument(#[from] ConvertError),
    #[error(transparent)]
    Unavailable(#[from] StoreGone),
    #[error("{0}")]
    Exhausted(String),
    /// The task that sorts and encodes an answer failed (it panicked: a bug).
    #[error("answering the query failed")]
    Answer(#[source] tokio::task::JoinError),
}

impl From<SubscribeError> for ApiError {
    fn from(e: SubscribeError) -> ApiError {
        match e {
            SubscribeError::Gone(gone) => ApiError::Unavailable(gone),
            SubscribeError::TooMany => ApiError::Exhausted(e.to_string()),
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        match e {
            ApiError::InvalidArgument(_) => Status::invalid_argument(e.to_string()),
            ApiError::Unavailable(_) => Status::unavailable(e.to_string()),
            ApiError::Exhausted(_) => Status::resource_exhausted(e.to_string()),
            ApiError::Answer(_) => Status::internal(e.to_string()),
        }
    }
}
