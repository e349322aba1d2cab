//! The autoencoder (dfencoder semantics, as Morpheus' DFP uses it). This module grows piece by
//! piece; so far: the preprocessing fitted on training data ([`preprocess`]).

pub mod preprocess;
