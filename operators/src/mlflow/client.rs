//! A client of MLflow's tracking and model-registry REST API (`/api/2.0/mlflow/...`) and of its
//! artifact proxy (`/api/2.0/mlflow-artifacts/artifacts/...`, served by `mlflow server` unless
//! it runs with `--no-serve-artifacts`): the calls the registry mirror needs, each one request,
//! each failure an [`MlflowError`] that says whether trying again can help.

use std::time::Duration;

use serde_json::{Value, json};

/// What went wrong talking to MLflow.
#[derive(Debug, thiserror::Error)]
pub enum MlflowError {
    /// No answer: refused, reset, timed out.
    #[error("MLflow at {url} did not answer: {reason}")]
    Unreachable {
        /// The request's URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// An answer with an error status.
    #[error("MLflow at {url} answered {status} {code}: {message}")]
    Server {
        /// The request's URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// MLflow's `error_code` (empty when the body had none).
        code: String,
        /// MLflow's `message`, else the body.
        message: String,
    },
    /// A request dfp cannot make, or an answer it cannot read.
    #[error("MLflow at {url}: {problem}")]
    Protocol {
        /// The request's URL (or the server's).
        url: String,
        /// What.
        problem: String,
    },
}

impl MlflowError {
    /// Whether the same request may succeed later: no answer, a server error, or too many
    /// requests. A refused request (bad name, unknown model) fails the same way again.
    pub fn retryable(&self) -> bool {
        match self {
            MlflowError::Unreachable { .. } => true,
            MlflowError::Server { status, .. } => *status >= 500 || *status == 429,
            MlflowError::Protocol { .. } => false,
        }
    }

    fn code(&self) -> &str {
        match self {
            MlflowError::Server { code, .. } => code,
            _ => "",
        }
    }
}

/// The result of one call.
pub type Reply<T> = std::result::Result<T, MlflowError>;

/// A run's id and where its artifacts go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The run id.
    pub id: String,
    /// Its artifact root (`mlflow-artifacts:/EXPERIMENT/RUN/artifacts`).
    pub artifact_uri: String,
}

/// A connection to one MLflow server.
#[derive(Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

/// The server's base URL of a registry URI: `mlflow+http://HOST:PORT[/PATH]` (or plain
/// `http://...`), without a trailing slash.
pub fn base_url(uri: &str) -> Reply<String> {
    let url = uri.strip_prefix("mlflow+").unwrap_or(uri);
    let refuse = |problem: String| MlflowError::Protocol {
        url: uri.to_string(),
        problem,
    };
    if url.starts_with("https://") {
        return Err(refuse(
            "https is not built into dfp's MLflow client: reach the server over http \
             (a TLS-terminating proxy in front of it, or a local tunnel)"
                .to_string(),
        ));
    }
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        refuse("a registry URI is mlflow+http://HOST:PORT (or a local directory)".to_string())
    })?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || host.contains(['?', '#', '@', ' ']) {
        return Err(refuse(format!("{host:?} is not a HOST:PORT")));
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn percent(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for b in part.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `value` quoted for an MLflow search filter. The values dfp searches for (model names as
/// [`super::mlflow_name`] writes them, hex keys) never hold a quote.
pub(super) fn quoted(value: &str) -> String {
    format!("'{value}'")
}

impl Client {
    /// A client of the server at `uri` (see [`base_url`]); every request gives up after
    /// `timeout`.
    pub fn new(uri: &str, timeout: Duration) -> Reply<Client> {
        let base = base_url(uri)?;
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Client { base, agent })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn finish(
        &self,
        url: &str,
        reply: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Reply<Vec<u8>> {
        let mut reply = reply.map_err(|e| MlflowError::Unreachable {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let status = reply.status().as_u16();
        let body = reply
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .map_err(|e| MlflowError::Unreachable {
                url: url.to_string(),
                reason: format!("reading the answer: {e}"),
            })?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let text = String::from_utf8_lossy(&body);
        Err(MlflowError::Server {
            url: url.to_string(),
            status,
            code: parsed["error_code"].as_str().unwrap_or("").to_string(),
            message: parsed["message"]
                .as_str()
                .map_or_else(|| text.chars().take(300).collect(), str::to_string),
        })
    }

    fn json(&self, url: &str, body: Vec<u8>) -> Reply<Value> {
        if body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body).map_err(|e| MlflowError::Protocol {
            url: url.to_string(),
            problem: format!("the answer is not JSON: {e}"),
        })
    }

    /// GET `api` (under `/api/2.0/mlflow/`) with query parameters.
    fn get(&self, api: &str, query: &[(&str, &str)]) -> Reply<Value> {
        let mut url = format!("{}/api/2.0/mlflow/{api}", self.base);
        for (i, (k, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("{k}={}", percent(v)));
        }
        let body = self.finish(&url, self.agent.get(&url).call())?;
        self.json(&url, body)
    }

    /// POST (or DELETE with `delete`) a JSON body to `api`.
    fn send(&self, api: &str, body: &Value, delete: bool) -> Reply<Value> {
        let url = format!("{}/api/2.0/mlflow/{api}", self.base);
        let reply = if delete {
            self.agent
                .delete(&url)
                .force_send_body()
                .header("Content-Type", "application/json")
                .send(body.to_string())
        } else {
            self.agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.to_string())
        };
        let body = self.finish(&url, reply)?;
        self.json(&url, body)
    }

    fn post(&self, api: &str, body: Value) -> Reply<Value> {
        self.send(api, &body, false)
    }

    /// The id of experiment `name`, created if missing.
    pub fn experiment(&self, name: &str) -> Reply<String> {
        let id = |v: &Value| {
            v["experiment"]["experiment_id"]
                .as_str()
                .map(str::to_string)
        };
        match self.get("experiments/get-by-name", &[("experiment_name", name)]) {
            Ok(v) => {
                if let Some(id) = id(&v) {
                    return Ok(id);
                }
            }
            Err(e) if e.code() == "RESOURCE_DOES_NOT_EXIST" => {}
            Err(e) => return Err(e),
        }
        match self.post("experiments/create", json!({ "name": name })) {
            Ok(v) => v["experiment_id"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| self.unreadable("experiments/create", &v)),
            // Another writer created it in between.
            Err(e) if e.code() == "RESOURCE_ALREADY_EXISTS" => {
                let v = self.get("experiments/get-by-name", &[("experiment_name", name)])?;
                id(&v).ok_or_else(|| self.unreadable("experiments/get-by-name", &v))
            }
            Err(e) => Err(e),
        }
    }

    fn unreadable(&self, api: &str, v: &Value) -> MlflowError {
        MlflowError::Protocol {
            url: format!("{}/api/2.0/mlflow/{api}", self.base),
            problem: format!(
                "unexpected answer: {}",
                v.to_string().chars().take(300).collect::<String>()
            ),
        }
    }

    fn run_of(&self, api: &str, info: &Value) -> Reply<Run> {
        match (info["run_id"].as_str(), info["artifact_uri"].as_str()) {
            (Some(id), Some(uri)) => Ok(Run {
                id: id.to_string(),
                artifact_uri: uri.to_string(),
            }),
            _ => Err(self.unreadable(api, info)),
        }
    }

    /// The first run of `experiment` whose tags hold every `(key, value)` of `tags`.
    pub fn find_run(&self, experiment: &str, tags: &[(&str, &str)]) -> Reply<Option<Run>> {
        let filter = tags
            .iter()
            .map(|(k, v)| format!("tags.`{k}` = {}", quoted(v)))
            .collect::<Vec<_>>()
            .join(" and ");
        let v = self.post(
            "runs/search",
            json!({ "experiment_ids": [experiment], "filter": filter, "max_results": 1 }),
        )?;
        match v["runs"].as_array().and_then(|r| r.first()) {
            Some(run) => self.run_of("runs/search", &run["info"]).map(Some),
            None => Ok(None),
        }
    }

    /// Starts a run named `name` in `experiment` with `tags`.
    pub fn create_run(
        &self,
        experiment: &str,
        name: &str,
        start_ms: i64,
        tags: &[(String, String)],
    ) -> Reply<Run> {
        let v = self.post(
            "runs/create",
            json!({
                "experiment_id": experiment,
                "run_name": name,
                "start_time": start_ms,
                "tags": key_values(tags),
            }),
        )?;
        self.run_of("runs/create", &v["run"]["info"])
    }

    /// Logs `params` and `metrics` (at step 0, time `at_ms`) on a run.
    pub fn log_batch(
        &self,
        run: &str,
        params: &[(String, String)],
        metrics: &[(String, f64)],
        at_ms: i64,
    ) -> Reply<()> {
        let metrics: Vec<Value> = metrics
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(k, v)| json!({ "key": k, "value": v, "timestamp": at_ms, "step": 0 }))
            .collect();
        self.post(
            "runs/log-batch",
            json!({ "run_id": run, "params": key_values(params), "metrics": metrics }),
        )
        .map(drop)
    }

    /// Marks a run finished.
    pub fn finish_run(&self, run: &str, end_ms: i64) -> Reply<()> {
        self.post(
            "runs/update",
            json!({ "run_id": run, "status": "FINISHED", "end_time": end_ms }),
        )
        .map(drop)
    }

    /// The artifact proxy's URL of `path` under an artifact root `mlflow-artifacts:/...`.
    fn artifact_url(&self, root: &str, path: &str) -> Reply<String> {
        let rest = root
            .strip_prefix("mlflow-artifacts:")
            .map(|r| r.trim_start_matches('/'))
            .ok_or_else(|| MlflowError::Protocol {
                url: self.base.clone(),
                problem: format!(
                    "the server keeps artifacts at {root:?}, which dfp can only reach through \
                     MLflow's artifact proxy: start `mlflow server` with --artifacts-destination \
                     (and without --no-serve-artifacts)"
                ),
            })?;
        let rest: Vec<&str> = rest.split('/').chain(path.split('/')).collect();
        let rest: Vec<String> = rest.iter().map(|p| percent(p)).collect();
        Ok(format!(
            "{}/api/2.0/mlflow-artifacts/artifacts/{}",
            self.base,
            rest.join("/")
        ))
    }

    /// Uploads `bytes` as artifact `path` under the artifact root `root`.
    pub fn upload(&self, root: &str, path: &str, bytes: &[u8]) -> Reply<()> {
        let url = self.artifact_url(root, path)?;
        let reply = self
            .agent
            .put(&url)
            .header("Content-Type", "application/octet-stream")
            .send(bytes);
        self.finish(&url, reply).map(drop)
    }

    /// Downloads artifact `path` under the artifact root `root`.
    pub fn download(&self, root: &str, path: &str) -> Reply<Vec<u8>> {
        let url = self.artifact_url(root, path)?;
        self.finish(&url, self.agent.get(&url).call())
    }

    /// Creates registered model `name` with `tags` unless it exists.
    pub fn ensure_model(&self, name: &str, tags: &[(String, String)]) -> Reply<()> {
        match self.post(
            "registered-models/create",
            json!({ "name": name, "tags": key_values(tags) }),
        ) {
            Ok(_) => Ok(()),
            Err(e) if e.code() == "RESOURCE_ALREADY_EXISTS" => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Registered model `name` as MLflow returns it (`registered-models/get`): its tags,
    /// aliases and latest versions.
    pub fn model(&self, name: &str) -> Reply<Value> {
        self.get("registered-models/get", &[("name", name)])
            .map(|mut v| v["registered_model"].take())
    }

    /// The registered models `filter` selects (MLflow's search syntax; empty: all), with their
    /// tags and aliases.
    pub fn search_models(&self, filter: &str) -> Reply<Vec<Value>> {
        self.pages("registered-models/search", filter, "registered_models")
    }

    /// Version `version` of registered model `name`, with its tags and source.
    pub fn version(&self, name: &str, version: &str) -> Reply<Value> {
        self.get(
            "model-versions/get",
            &[("name", name), ("version", version)],
        )
        .map(|mut v| v["model_version"].take())
    }

    /// Every item (under `key`) of a paged search `api` with `filter`.
    fn pages(&self, api: &str, filter: &str, key: &str) -> Reply<Vec<Value>> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let mut query = vec![("max_results", "200")];
            if !filter.is_empty() {
                query.push(("filter", filter));
            }
            if !token.is_empty() {
                query.push(("page_token", token.as_str()));
            }
            let mut v = self.get(api, &query)?;
            if let Some(page) = v[key].as_array_mut() {
                out.append(page);
            }
            match v["next_page_token"].as_str() {
                Some(t) if !t.is_empty() => token = t.to_string(),
                _ => return Ok(out),
            }
        }
    }

    /// Versions of registered model `name` (with their tags), oldest first.
    pub fn versions(&self, name: &str) -> Reply<Vec<Value>> {
        let filter = format!("name = {}", quoted(name));
        let mut out = self.pages("model-versions/search", &filter, "model_versions")?;
        out.sort_by_key(|v| {
            v["version"]
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
        });
        Ok(out)
    }

    /// Creates a version of `name` from the artifacts at `source`, logged by `run`.
    pub fn create_version(
        &self,
        name: &str,
        source: &str,
        run: &str,
        tags: &[(String, String)],
        description: &str,
    ) -> Reply<String> {
        let v = self.post(
            "model-versions/create",
            json!({
                "name": name,
                "source": source,
                "run_id": run,
                "tags": key_values(tags),
                "description": description,
            }),
        )?;
        v["model_version"]["version"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| self.unreadable("model-versions/create", &v))
    }

    /// Points `alias` of `name` at `version`.
    pub fn set_alias(&self, name: &str, alias: &str, version: &str) -> Reply<()> {
        self.post(
            "registered-models/alias",
            json!({ "name": name, "alias": alias, "version": version }),
        )
        .map(drop)
    }

    /// Removes `alias` of `name` (nothing when it has none).
    pub fn delete_alias(&self, name: &str, alias: &str) -> Reply<()> {
        self.send(
            "registered-models/alias",
            &json!({ "name": name, "alias": alias }),
            true,
        )
        .map(drop)
    }

    /// Sets tag `key` of registered model `name`.
    pub fn set_model_tag(&self, name: &str, key: &str, value: &str) -> Reply<()> {
        self.post(
            "registered-models/set-tag",
            json!({ "name": name, "key": key, "value": value }),
        )
        .map(drop)
    }

    /// Sets tag `key` of version `version` of `name`.
    pub fn set_version_tag(&self, name: &str, version: &str, key: &str, value: &str) -> Reply<()> {
        self.post(
            "model-versions/set-tag",
            json!({ "name": name, "version": version, "key": key, "value": value }),
        )
        .map(drop)
    }
}

/// The value of tag `key` of an MLflow object as its API returns it (`{"tags": [{"key",
/// "value"}]}`: a run's data, a model, a model version).
pub fn tag(item: &Value, key: &str) -> Option<String> {
    item["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .and_then(|t| t["value"].as_str())
        .map(str::to_string)
}

fn key_values(pairs: &[(String, String)]) -> Vec<Value> {
    pairs
        .iter()
        .map(|(k, v)| json!({ "key": k, "value": v }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_uris_name_an_http_server() {
        assert_eq!(
            base_url("mlflow+http://127.0.0.1:5000/").unwrap(),
            "http://127.0.0.1:5000"
        );
        assert_eq!(
            base_url("http://mlflow.internal:80/prefix").unwrap(),
            "http://mlflow.internal:80/prefix"
        );
        let https = base_url("mlflow+https://host:443").unwrap_err().to_string();
        assert!(https.contains("https is not built"), "{https}");
        for bad in [
            "mlflow+ftp://x",
            "mlflow+http://",
            "mlflow+http://a b:1",
            "models",
        ] {
            assert!(base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn artifact_paths_are_escaped_part_by_part() {
        let c = Client::new("mlflow+http://127.0.0.1:1", Duration::from_secs(1)).unwrap();
        assert_eq!(
            c.artifact_url(
                "mlflow-artifacts:/1/abc/artifacts",
                "model/DFP-azure-a b@x.com.dfpmodel"
            )
            .unwrap(),
            "http://127.0.0.1:1/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/model/\
             DFP-azure-a%20b%40x.com.dfpmodel"
        );
        let e = c.artifact_url("file:///srv/artifacts", "x").unwrap_err();
        assert!(e.to_string().contains("--artifacts-destination"), "{e}");
    }

    #[test]
    fn unreachable_servers_are_retryable_refusals_are_not() {
        let c = Client::new("mlflow+http://127.0.0.1:9", Duration::from_secs(2)).unwrap();
        let e = c.experiment("dfp").unwrap_err();
        assert!(e.retryable(), "{e}");
        assert!(e.to_string().contains("127.0.0.1:9"), "{e}");
        let refused = MlflowError::Server {
            url: "u".into(),
            status: 400,
            code: "INVALID_PARAMETER_VALUE".into(),
            message: "m".into(),
        };
        assert!(!refused.retryable());
    }
}
