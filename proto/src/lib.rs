//! The coordinator–worker protocol of a neuromfa sweep, generated from `neuromfa.proto`:
//! the messages and the `Coordinator` service's client and server. Both sides import it, so
//! neither depends on the other.

tonic::include_proto!("neuromfa.v1");
