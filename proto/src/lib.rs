//! The coordinator–worker protocol of a neuromfa sweep: the messages and the `Coordinator`
//! service's client and server, generated from `neuromfa.proto`; the sweep token every call
//! carries ([`auth`]); TLS on the channel ([`tls`]). Both sides import it, so neither
//! depends on the other.

pub mod auth;
pub mod tls;

tonic::include_proto!("neuromfa.v1");
