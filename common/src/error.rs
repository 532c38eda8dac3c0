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
    /// A PyTorch `.bin` (`torch.save` zip) file that cannot be read; `problem` says why and
    /// names the entry or tensor.
    #[error("{path}: cannot read as a PyTorch zip checkpoint: {problem}")]
    Torch { path: PathBuf, problem: TorchError },
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

/// What is wrong with a `torch.save` zip archive. Raised by the stage parsers of
/// [`crate::torch`], which see bytes, not paths: callers wrap it with the file it came from
/// ([`Error::Torch`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TorchError {
    #[error(
        "a legacy (pre-1.6) torch.save file, not a zip archive; re-save it with torch 1.6 or \
         later, or convert it to safetensors"
    )]
    Legacy,
    #[error("not a zip archive: {0}")]
    NotZip(String),
    #[error("truncated: {0}")]
    Truncated(String),
    #[error("corrupt zip archive: {0}")]
    CorruptZip(String),
    #[error(
        "entry `{entry}` is compressed (method {method}); torch.save stores entries uncompressed"
    )]
    Compressed { entry: String, method: u16 },
    #[error("entry `{entry}` is encrypted")]
    Encrypted { entry: String },
    #[error("no `<archive>/data.pkl` entry: not a torch.save archive")]
    NoPickle,
    #[error("stored {0}-endian; only little-endian checkpoints can be read")]
    ByteOrder(String),
    #[error("data.pkl, byte {offset}: {message}")]
    BadPickle { offset: usize, message: String },
    #[error(
        "data.pkl refers to `{module}.{name}`, which is not part of a state dict; refusing it"
    )]
    UnknownGlobal { module: String, name: String },
    #[error("tensor `{tensor}`: its storage `{entry}` is not in the archive")]
    MissingStorage { tensor: String, entry: String },
    #[error("tensor `{tensor}` is stored as {storage}; supported are HalfStorage, BFloat16Storage and FloatStorage")]
    UnsupportedStorage { tensor: String, storage: String },
    #[error(
        "tensor `{tensor}` needs {needed} bytes of storage `{entry}`, which holds {available}"
    )]
    OutsideStorage {
        tensor: String,
        entry: String,
        needed: u128,
        available: u64,
    },
}

impl Error {
    /// The error for a `.bin` file that `problem` makes unreadable: a storage type weights
    /// cannot have is an unsupported dtype, as in a safetensors file; anything else a
    /// corrupt archive.
    pub fn torch(path: impl Into<PathBuf>, problem: TorchError) -> Self {
        match problem {
            TorchError::UnsupportedStorage { tensor, storage } => Error::UnsupportedDtype {
                path: path.into(),
                tensor,
                dtype: storage,
            },
            problem => Error::Torch {
                path: path.into(),
                problem,
            },
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
