//! Model files: `DFPMODEL` magic, format version, the lengths of a header and a body, the
//! header (the [`ModelHeader`]: name, schema, features, training window, hyperparameters,
//! metrics), the body (preprocessing, weights, loss statistics, calibration, drift reference),
//! both bincode 2, and an FNV-1a checksum of everything before it. A file that is truncated, corrupt, of another format
//! version, or inconsistent with itself is refused with the reason; it never yields a model
//! that would score wrongly.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::calibration::Calibration;
use super::drift::Reference;
use super::encode::Preprocessor;
use super::network::Network;
use super::{Model, ModelHeader};
use dfp_core::hash::fnv1a64;
use dfp_core::schema::SourceSchema;
use dfp_core::{Error, Result};

/// The first bytes of every model file.
pub const MAGIC: &[u8; 8] = b"DFPMODEL";
/// The format version this build writes and reads (2: preprocessing holds profiles; 3: the
/// model carries its calibration; 4: and its drift reference; 5: its feature list names the
/// log-scaled numerics).
pub const FORMAT_VERSION: u32 = 5;
const PREFIX: usize = 8 + 4 + 8 + 8;
const LIMIT: usize = 1 << 31;

#[derive(Serialize)]
struct BodyRef<'a> {
    preprocessor: &'a Preprocessor,
    network: &'a Network,
    loss_mean: &'a [f64],
    loss_std: &'a [f64],
    calibration: &'a Calibration,
    reference: &'a Reference,
}

/// What [`BodyRef`] writes.
#[derive(Deserialize)]
struct Body {
    preprocessor: Preprocessor,
    network: Network,
    loss_mean: Vec<f64>,
    loss_std: Vec<f64>,
    calibration: Calibration,
    reference: Reference,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<LIMIT>()
}

impl Model {
    /// The model as file bytes; a model whose parts disagree (which the load check would
    /// refuse) is refused here, so nothing unreadable is ever written.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.check().map_err(|problem| {
            Error::stage(
                "model",
                format!(
                    "refusing to write {} (trained on {} rows): {problem}",
                    self.header.name, self.header.rows
                ),
            )
        })?;
        self.encode()
    }

    /// The file bytes, unchecked.
    fn encode(&self) -> Result<Vec<u8>> {
        let header = encode(&self.header)?;
        let body = encode(&BodyRef {
            preprocessor: &self.preprocessor,
            network: &self.network,
            loss_mean: &self.loss_mean,
            loss_std: &self.loss_std,
            calibration: &self.calibration,
            reference: &self.reference,
        })?;
        let mut out = Vec::with_capacity(PREFIX + header.len() + body.len() + 8);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&body);
        out.extend_from_slice(&fnv1a64(&out).to_le_bytes());
        Ok(out)
    }

    /// A model from file bytes; `origin` names the file in errors.
    pub fn from_bytes(bytes: &[u8], origin: &Path) -> Result<Model> {
        let bad = |problem: String| Error::ModelFile {
            path: origin.to_path_buf(),
            problem,
        };
        if bytes.len() < 8 || &bytes[..8] != MAGIC {
            return Err(bad("not a dfp model file (no DFPMODEL magic)".into()));
        }
        if bytes.len() < PREFIX + 8 {
            return Err(bad(format!("truncated: {} bytes", bytes.len())));
        }
        let word = |at: usize, n: usize| -> u64 {
            let mut b = [0u8; 8];
            b[..n].copy_from_slice(&bytes[at..at + n]);
            u64::from_le_bytes(b)
        };
        let version = word(8, 4);
        if version != u64::from(FORMAT_VERSION) {
            return Err(bad(format!(
                "format version {version}; this dfp reads version {FORMAT_VERSION} (retrain, or \
                 use the dfp that wrote it)"
            )));
        }
        let (h_len, b_len) = (word(12, 8), word(20, 8));
        let expected = (PREFIX as u64)
            .checked_add(h_len)
            .and_then(|v| v.checked_add(b_len))
            .and_then(|v| v.checked_add(8));
        if expected != Some(bytes.len() as u64) {
            return Err(bad(format!(
                "truncated or padded: {} bytes, the lengths in the file say {}",
                bytes.len(),
                expected.map_or("more than 2^64".to_string(), |v| v.to_string())
            )));
        }
        let end = bytes.len() - 8;
        if fnv1a64(&bytes[..end]) != word(end, 8) {
            return Err(bad("checksum mismatch: the file is corrupt".into()));
        }
        let h_end = PREFIX + h_len as usize;
        let header: ModelHeader =
            decode(&bytes[PREFIX..h_end]).map_err(|e| bad(format!("header: {e}")))?;
        let body: Body = decode(&bytes[h_end..end]).map_err(|e| bad(format!("body: {e}")))?;
        let model = Model {
            header,
            preprocessor: body.preprocessor,
            network: body.network,
            loss_mean: body.loss_mean,
            loss_std: body.loss_std,
            calibration: body.calibration,
            reference: body.reference,
        };
        model.check().map_err(bad)?;
        Ok(model)
    }

    /// Writes the model to `path` atomically (a temporary file in the same directory, then a
    /// rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        dfp_core::files::replace(path, &self.to_bytes()?, "writing model")
    }

    /// Reads a model file.
    pub fn load(path: &Path) -> Result<Model> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, "reading model", e))?;
        Model::from_bytes(&bytes, path)
    }

    /// Refuses a model trained on another schema than `schema`; `origin` names the model.
    pub fn check_schema(&self, schema: &SourceSchema, origin: &Path) -> Result<()> {
        self.check_fingerprint(&schema.name, schema.fingerprint(), origin)
    }

    /// [`Model::check_schema`] against the schema `name` whose fingerprint is `fingerprint`
    /// (worked out once by a caller that checks many models).
    pub fn check_fingerprint(&self, name: &str, fingerprint: u64, origin: &Path) -> Result<()> {
        if self.header.schema_fingerprint != fingerprint {
            return Err(Error::ModelFile {
                path: origin.to_path_buf(),
                problem: format!(
                    "trained for source schema {:?} (fingerprint {:016x}), not this {name:?} \
                     ({fingerprint:016x}); retrain it",
                    self.header.source, self.header.schema_fingerprint,
                ),
            });
        }
        Ok(())
    }

    /// Checks that the parts agree with each other.
    fn check(&self) -> std::result::Result<(), String> {
        self.network.check()?;
        let pre = &self.preprocessor;
        let shape = &self.network.shape;
        if pre.features != self.header.features {
            return Err("the header's features differ from the preprocessing's".into());
        }
        if pre.scalers.len() != shape.n_numeric
            || pre.features.numeric.len() != shape.n_numeric
            || pre.features.binary.len() != shape.n_binary
            || pre.vocabularies.len() != shape.categories.len()
            || pre.features.categorical.len() != shape.categories.len()
        {
            return Err("the preprocessing does not match the network's inputs".into());
        }
        if let Some(i) = pre
            .vocabularies
            .iter()
            .zip(&shape.categories)
            .position(|(v, &n)| {
                v.len() != n
                    || v.values.last().map(String::as_str) != Some(super::preprocess::OTHER)
            })
        {
            return Err(format!("vocabulary {i} does not match its embedding"));
        }
        let f = shape.n_features();
        if self.loss_mean.len() != f || self.loss_std.len() != f {
            return Err("loss statistics do not match the features".into());
        }
        if self.loss_std.iter().any(|&s| !(s.is_finite() && s > 0.0))
            || self.loss_mean.iter().any(|m| !m.is_finite())
        {
            return Err("loss statistics are not finite and positive".into());
        }
        if pre
            .scalers
            .iter()
            .any(|s| !(s.mean.is_finite() && s.std.is_finite() && s.std > 0.0))
        {
            return Err("a scaler is not finite".into());
        }
        let c = &self.calibration;
        let sound =
            |f: &super::calibration::Fit| f.mean.is_finite() && f.var.is_finite() && f.var >= 0.0;
        if !sound(&c.validation) || !c.users.values().all(sound) {
            return Err("the calibration is not finite".into());
        }
        let finite = c.knots.iter().all(|(z, n)| z.is_finite() && n.is_finite());
        if !finite
            || c.knots
                .windows(2)
                .any(|w| w[1].0 <= w[0].0 || w[1].1 < w[0].1)
        {
            return Err("the calibration's tail knots are not finite and increasing".into());
        }
        self.reference.check(pre)
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, String> {
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!("{} trailing bytes", bytes.len() - used));
    }
    Ok(value)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, config())
        .map_err(|e| Error::model("file", format!("encoding model: {e}")))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::models;
    use super::*;

    #[test]
    fn save_and_load_round_trip_exactly() {
        let (schema, _, models) = models();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.dfpmodel");
        models[0].save(&path).unwrap();
        let back = Model::load(&path).unwrap();
        assert_eq!(back, models[0]);
        back.check_schema(&schema, &path).unwrap();
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn corrupt_truncated_and_foreign_files_are_refused_with_the_reason() {
        let (_, _, models) = models();
        let bytes = models[0].to_bytes().unwrap();
        let p = Path::new("m.dfpmodel");
        let err = |b: &[u8]| Model::from_bytes(b, p).unwrap_err().to_string();
        assert!(err(b"{\"not\": \"a model\"}").contains("no DFPMODEL magic"));
        assert!(err(&bytes[..bytes.len() / 2]).contains("truncated"));
        assert!(err(&bytes[..20]).contains("truncated"));
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 0x10;
        assert!(err(&flipped).contains("checksum mismatch"));
        let mut other = bytes.clone();
        other[8] = 99;
        assert!(err(&other).contains("format version 99"));
        assert!(err(&other).starts_with("model file m.dfpmodel:"));
    }

    #[test]
    fn no_damage_panics_or_loads() {
        let (_, _, models) = models();
        let bytes = models[0].to_bytes().unwrap();
        let p = Path::new("m");
        for cut in (0..bytes.len()).step_by(997) {
            assert!(Model::from_bytes(&bytes[..cut], p).is_err());
        }
        let mut state = 0x1234_5678_u64;
        for _ in 0..200 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mut b = bytes.clone();
            let at = (state >> 33) as usize % b.len();
            b[at] = b[at].wrapping_add(1 + (state & 0x7f) as u8);
            assert!(
                Model::from_bytes(&b, p).is_err(),
                "byte {at} changed and still loaded"
            );
        }
    }

    #[test]
    fn a_consistent_file_with_inconsistent_parts_is_refused() {
        let (_, _, models) = models();
        let mut m = models[0].clone();
        m.loss_std.pop();
        let err = m.to_bytes().unwrap_err();
        assert!(
            err.to_string().contains("refusing to write")
                && err.to_string().contains("loss statistics"),
            "{err}"
        );
        let err = Model::from_bytes(&m.encode().unwrap(), Path::new("m")).unwrap_err();
        assert!(err.to_string().contains("loss statistics"), "{err}");
        let mut m = models[0].clone();
        m.preprocessor.vocabularies[0].values.pop();
        let err = Model::from_bytes(&m.encode().unwrap(), Path::new("m")).unwrap_err();
        assert!(err.to_string().contains("vocabulary 0"), "{err}");
    }

    #[test]
    fn a_model_for_another_schema_is_refused() {
        let (_, _, models) = models();
        let duo = SourceSchema::builtin("duo").unwrap();
        let err = models[0]
            .check_schema(&duo, Path::new("m"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("trained for source schema \"azure\""), "{err}");
    }
}
