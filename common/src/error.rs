//! One error type for the science, each variant naming what went wrong and where.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: not a valid safetensors file: {message}")]
    CorruptFile { path: PathBuf, message: String },
    #[error("{dir}: checkpoint has no tensor `{tensor}`")]
    MissingTensor { dir: PathBuf, tensor: String },
    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    WrongShape {
        path: PathBuf,
        tensor: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{path}: tensor `{tensor}` has dtype {dtype}; supported are F32, F16 and BF16")]
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error("{path}: tensor `{tensor}` holds a non-finite weight ({value}) at [{row}, {col}]")]
    NonFiniteWeight {
        path: PathBuf,
        tensor: String,
        row: usize,
        col: usize,
        value: f64,
    },
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    #[error("{message}")]
    Spectrum { seed: u32, message: String },
    #[error("{0}")]
    Spec(#[from] crate::spectrum::SpectrumError),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
