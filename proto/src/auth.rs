//! The shared sweep token: every RPC carries `authorization: Bearer <token>`.

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Server side: refuses any request without the sweep's token.
#[derive(Clone)]
pub struct RequireToken {
    expected: Vec<u8>,
}

impl RequireToken {
    pub fn new(token: String) -> Self {
        Self {
            expected: format!("Bearer {token}").into_bytes(),
        }
    }
}

/// Compares without an early exit, so timing does not reveal how much of a guess matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match request.metadata().get("authorization") {
            Some(value) if constant_time_eq(value.as_bytes(), &self.expected) => Ok(request),
            Some(_) => Err(Status::unauthenticated(
                "wrong sweep token: set NEUROMFA_TOKEN to the token the coordinator uses",
            )),
            None => Err(Status::unauthenticated(
                "no sweep token: set NEUROMFA_TOKEN to the token the coordinator uses",
            )),
        }
    }
}

/// Client side: adds the token to every request.
#[derive(Clone)]
pub struct AddToken {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl AddToken {
    /// Fails when the token cannot be sent as a header (control characters).
    pub fn new(token: &str) -> Result<Self, String> {
        let header = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the sweep token holds characters that cannot be sent".to_string())?;
        Ok(Self {
            header: Some(header),
        })
    }
}

impl Interceptor for AddToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"Bearer a", b"Bearer a"));
        assert!(!constant_time_eq(b"Bearer a", b"Bearer b"));
        assert!(!constant_time_eq(b"Bearer a", b"Bearer ab"));
    }
}
