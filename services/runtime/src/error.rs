//! Why a domain service's core refuses or fails a use case, in the domain's words. The core
//! returns it; each face maps it once (`From<Error> for tonic::Status` for gRPC, below; a
//! service's HTTP face maps it to its own statuses).

use crate::store::StoreError;
use proto::event::EventError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller's request is not acceptable (the message says why): nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// What the request names does not exist (or is not the caller's to know of).
    #[error("{0}")]
    NotFound(String),
    /// The caller's credential does not cover what it asks (its commune).
    #[error("{0}")]
    Forbidden(String),
    /// A bound the service keeps was reached (try again later, or ask for less).
    #[error("{0}")]
    Exhausted(String),
    /// The store could not complete the write: nothing was acknowledged, the caller may retry.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The service built an event its own contract refuses: a bug, nothing stored.
    #[error("built an invalid event: {0}")]
    Event(#[from] EventError),
    /// Something the service holds is not what it should be (a bug).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::Invalid(message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Error {
        Error::NotFound(message.into())
    }

    pub fn forbidden(message: impl Into<String>) -> Error {
        Error::Forbidden(message.into())
    }

    pub fn exhausted(message: impl Into<String>) -> Error {
        Error::Exhausted(message.into())
    }

    pub fn internal(message: impl std::fmt::Display) -> Error {
        Error::Internal(message.to_string())
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        match e {
            Error::Invalid(m) => tonic::Status::invalid_argument(m),
            Error::NotFound(m) => tonic::Status::not_found(m),
            Error::Forbidden(m) => tonic::Status::permission_denied(m),
            Error::Exhausted(m) => tonic::Status::resource_exhausted(m),
            Error::Store(e) => e.into(),
            Error::Event(e) => e.into(),
            Error::Internal(m) => tonic::Status::internal(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_grpc_code() {
        let code = |e: Error| tonic::Status::from(e).code();
        assert_eq!(code(Error::invalid("x")), tonic::Code::InvalidArgument);
        assert_eq!(code(Error::not_found("x")), tonic::Code::NotFound);
        assert_eq!(code(Error::exhausted("x")), tonic::Code::ResourceExhausted);
        assert_eq!(code(Error::forbidden("x")), tonic::Code::PermissionDenied);
        assert_eq!(code(Error::internal("x")), tonic::Code::Internal);
        assert_eq!(code(Error::Event(EventError::NoPayload)), tonic::Code::Internal);
        let corrupt = StoreError::Corrupt { what: "lamp", key: "EP1".into(), message: "bad".into() };
        assert_eq!(code(Error::Store(corrupt)), tonic::Code::Unavailable);
    }
}
