//! Keeps `examples/` honest. For every connector there must be `examples/<broker>/` with
//! `connector.yaml` (Deployment and what it needs), `scaledobject.yaml` (KEDA) and
//! `mqtrigger.yaml` (Fission), and:
//! - every file parses;
//! - core kinds validate offline against Kubernetes' schemas (`kubernetes-validate --strict`);
//! - ScaledObjects, TriggerAuthentications and MessageQueueTriggers validate against the schemas
//!   in `examples/schemas/` (`check-jsonschema`), including the KEDA objects Fission would
//!   create from each MessageQueueTrigger;
//! - the Deployment's environment (secrets resolved from the Secret next to it) is accepted by
//!   the connector's own configuration parser, and every variable it sets is one the connector
//!   reads; the same for the environment Fission builds from the MessageQueueTrigger;
//! - image names, probes, the admin port, the grace period and the security context agree
//!   with the connector and the image;
//! - no Deployment scaled by KEDA sets `spec.replicas` (a re-apply would fight the autoscaler);
//! - every MessageQueueTrigger's `podspec` gives Fission's container (named after the trigger)
//!   what `connector.yaml` gives the connector, within what the Fission version takes:
//!   `<broker>/mqtrigger.yaml` is for Fission 1.24 and later, whose admission webhook refuses
//!   any podspec field but nodeSelector, tolerations, affinity, runtimeClassName and
//!   containers[].resources (so: the resources); the triggers in `fission/` (besides
//!   `values.yaml`) are for Fission up to 1.23, which merges a whole PodSpec (so: probes on the
//!   admin port, resources, security contexts, grace period); each podspec is a valid PodSpec;
//! - `examples/fission/values.yaml` swaps every Fission connector image we ship;
//! - the GitHub workflows are valid workflows.

use base64::Engine as _;
use connector_core::app::{Connector, configure};
use connector_core::config::{ConfigError, Env, Settings};
use connector_core::testkit::RecordingEnv;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const REGISTRY: &str = "ghcr.io/keda-connectors-rs";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the AWS SDK reads from the environment itself (the connector never sees these).
const AWS_SDK_VARS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ENDPOINT_URL",
];

struct Kind {
    /// `examples/<dir>`
    dir: &'static str,
    /// Crate and binary; the image is `keda-<name>`.
    name: &'static str,
    /// Fission's `messageQueueType`.
    mqtype: &'static str,
    /// KEDA's trigger type (Fission uses the mqtype as the trigger type).
    trigger: &'static str,
    /// Key under `mqt_keda.connector_images` in Fission's Helm values.
    helm_key: &'static str,
    /// The trigger metadata key naming the source, and the variable the connector reads it from.
    source: (&'static str, &'static str),
    configure: fn(&dyn Env) -> Result<Settings, ConfigError>,
    /// Variables read by a client library rather than through [`Env`].
    library_vars: &'static [&'static str],
    /// Prefixes passed through as a group (read with [`Env::keys`]).
    prefixes: &'static [&'static str],
}

fn conf<C: Connector>(env: &dyn Env) -> Result<Settings, ConfigError> {
    configure::<C>(env).map(|(settings, _)| settings)
}

const KINDS: &[Kind] = &[
    Kind {
        dir: "rabbitmq",
        name: "rabbitmq-http-connector",
        mqtype: "rabbitmq",
        trigger: "rabbitmq",
        helm_key: "rabbitmq",
        source: ("queueName", "TOPIC"),
        configure: conf::<rabbitmq_http_connector::RabbitConnector>,
        library_vars: &[],
        prefixes: &[],
    },
    Kind {
        dir: "kafka",
        name: "kafka-http-connector",
        mqtype: "kafka",
        trigger: "kafka",
        helm_key: "kafka",
        source: ("topic", "TOPIC"),
        configure: conf::<kafka_http_connector::KafkaConnector>,
        library_vars: &[],
        prefixes: &["KAFKA_PROPERTY_"],
    },
    Kind {
        dir: "redis",
        name: "redis-http-connector",
        mqtype: "redis",
        trigger: "redis",
        helm_key: "redis",
        source: ("listName", "TOPIC"),
        configure: conf::<redis_http_connector::RedisConnector>,
        library_vars: &[],
        prefixes: &[],
    },
    Kind {
        dir: "nats-jetstream",
        name: "nats-jetstream-http-connector",
        mqtype: "nats-jetstream",
        trigger: "nats-jetstream",
        helm_key: "nats_jetstream",
        source: ("consumer", "CONSUMER"),
        configure: conf::<nats_jetstream_http_connector::NatsConnector>,
        library_vars: &[],
        prefixes: &[],
    },
    Kind {
        dir: "aws-sqs",
        name: "aws-sqs-http-connector",
        mqtype: "aws-sqs-queue",
        trigger: "aws-sqs-queue",
        helm_key: "aws_sqs",
        source: ("queueURL", "QUEUE_URL"),
        configure: conf::<aws_sqs_http_connector::SqsConnector>,
        library_vars: AWS_SDK_VARS,
        prefixes: &[],
    },
    Kind {
        dir: "aws-kinesis",
        name: "aws-kinesis-http-connector",
        mqtype: "aws-kinesis-stream",
        trigger: "aws-kinesis-stream",
        helm_key: "awskinesis",
        source: ("streamName", "TOPIC"),
        configure: conf::<aws_kinesis_http_connector::KinesisConnector>,
        library_vars: AWS_SDK_VARS,
        prefixes: &[],
    },
    Kind {
        dir: "gcp-pubsub",
        name: "gcp-pubsub-http-connector",
        mqtype: "gcp-pubsub",
        trigger: "gcp-pubsub",
        helm_key: "gcp_pubsub",
        source: ("subscriptionName", "SUBSCRIPTION_NAME"),
        configure: conf::<gcp_pubsub_http_connector::PubSubConnector>,
        library_vars: &[],
        prefixes: &[],
    },
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn examples() -> PathBuf {
    root().join("examples")
}

/// One YAML document and where it came from.
#[derive(Debug, Clone)]
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
}

fn to_json(y: &yaml_rust2::Yaml, file: &str) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Real(s) => json!(
            s.parse::<f64>()
                .unwrap_or_else(|_| panic!("{file}: bad number {s}"))
        ),
        Yaml::Integer(i) => json!(i),
        Yaml::String(s) => json!(s),
        Yaml::Boolean(b) => json!(b),
        Yaml::Array(a) => Value::Array(a.iter().map(|v| to_json(v, file)).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        other => panic!("{file}: mapping key {other:?} is not a string"),
                    };
                    (key, to_json(v, file))
                })
                .collect(),
        ),
        Yaml::Null => Value::Null,
        Yaml::Alias(_) | Yaml::BadValue => panic!("{file}: aliases and bad values are not allowed"),
    }
}

fn load(path: &Path) -> Vec<Doc> {
    let file = path
        .strip_prefix(examples())
        .unwrap_or(path)
        .display()
        .to_string();
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{file}: {e}"));
    let docs = yaml_rust2::YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("examples/{file} does not parse: {e}"));
    docs.iter()
        .filter(|d| !d.is_null())
        .map(|d| Doc {
            file: file.clone(),
            value: to_json(d, &file),
        })
        .collect()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

fn one<'a>(docs: &'a [Doc], kind: &str, file: &str) -> &'a Doc {
    let found: Vec<&Doc> = docs.iter().filter(|d| d.kind() == kind).collect();
    assert_eq!(found.len(), 1, "{file}: expected exactly one {kind}");
    found[0]
}

/// The value of `key` in Secret `name` among `docs` (`stringData`, or base64 `data`).
fn secret_value(docs: &[Doc], name: &str, key: &str) -> Option<String> {
    let secret = docs
        .iter()
        .find(|d| d.kind() == "Secret" && d.name() == name)?;
    if let Some(v) = secret.value["stringData"][key].as_str() {
        return Some(v.to_owned());
    }
    let raw = secret.value["data"][key].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
    String::from_utf8(bytes).ok()
}

fn secret_keys(docs: &[Doc], name: &str) -> Vec<String> {
    let Some(secret) = docs
        .iter()
        .find(|d| d.kind() == "Secret" && d.name() == name)
    else {
        return Vec::new();
    };
    ["stringData", "data"]
        .iter()
        .filter_map(|f| secret.value[f].as_object())
        .flat_map(|m| m.keys().cloned())
        .collect()
}

/// Fission's `toEnvVar` (pkg/mqtrigger/scalermanager.go): `_` before each capitalised word,
/// then between a lower-case letter or digit and an upper-case one, then upper case.
fn to_env_var(key: &str) -> String {
    let c: Vec<char> = key.chars().collect();
    // (.)([A-Z][a-z]+), leftmost, non-overlapping.
    let mut first = String::new();
    let mut i = 0;
    while i < c.len() {
        if i + 2 < c.len() && c[i + 1].is_ascii_uppercase() && c[i + 2].is_ascii_lowercase() {
            let mut end = i + 2;
            while end < c.len() && c[end].is_ascii_lowercase() {
                end += 1;
            }
            first.push(c[i]);
            first.push('_');
            first.extend(&c[i + 1..end]);
            i = end;
        } else {
            first.push(c[i]);
            i += 1;
        }
    }
    // ([a-z0-9])([A-Z]), leftmost, non-overlapping.
    let c: Vec<char> = first.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < c.len() {
        if i + 1 < c.len()
            && (c[i].is_ascii_lowercase() || c[i].is_ascii_digit())
            && c[i + 1].is_ascii_uppercase()
        {
            out.push(c[i]);
            out.push('_');
            out.push(c[i + 1]);
            i += 2;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out.to_uppercase()
}

#[test]
fn fission_env_var_names() {
    for (key, var) in [
        ("bootstrapServers", "BOOTSTRAP_SERVERS"),
        ("consumerGroup", "CONSUMER_GROUP"),
        ("queueURL", "QUEUE_URL"),
        ("awsAccessKeyID", "AWS_ACCESS_KEY_ID"),
        ("awsSecretAccessKey", "AWS_SECRET_ACCESS_KEY"),
        (
            "GoogleApplicationCredentials",
            "GOOGLE_APPLICATION_CREDENTIALS",
        ),
        ("credentialsFromEnv", "CREDENTIALS_FROM_ENV"),
        (
            "natsServerMonitoringEndpoint",
            "NATS_SERVER_MONITORING_ENDPOINT",
        ),
        ("PROJECT_ID", "PROJECT_ID"),
        ("ackwait", "ACKWAIT"),
        ("host", "HOST"),
    ] {
        assert_eq!(to_env_var(key), var, "{key}");
    }
}

/// Runs the connector's configuration parser on `vars`; returns the settings and what it read.
fn parse_env(
    kind: &Kind,
    vars: BTreeMap<String, String>,
    origin: &str,
) -> (Settings, BTreeSet<String>) {
    let env = RecordingEnv::new(vars);
    let settings = (kind.configure)(&env)
        .unwrap_or_else(|e| panic!("{origin}: {} rejects this environment: {e}", kind.name));
    let read = env.into_read();
    (settings, read)
}

fn is_read(kind: &Kind, read: &BTreeSet<String>, name: &str) -> bool {
    read.contains(name)
        || kind.library_vars.contains(&name)
        || kind.prefixes.iter().any(|p| name.starts_with(p))
}

/// Checks `connector.yaml`; returns the Deployment's name and its resolved environment.
fn check_connector(kind: &Kind, docs: &[Doc]) -> (String, BTreeMap<String, String>) {
    let file = format!("{}/connector.yaml", kind.dir);
    for d in docs.iter().filter(|d| d.kind() == "Deployment") {
        no_replicas(d, &file);
    }
    let deployment = one(docs, "Deployment", &file);
    let pod = &deployment.value["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "{file}: one container");
    let c = &containers[0];
    assert_eq!(
        c["image"].as_str(),
        Some(format!("{REGISTRY}/keda-{}:{VERSION}", kind.name).as_str()),
        "{file}: image"
    );
    assert!(
        c.get("command").is_none() && c.get("args").is_none(),
        "{file}: the image's entrypoint alone runs the connector (as under Fission)"
    );

    let mut vars = BTreeMap::new();
    for e in c["env"].as_array().expect("env") {
        let name = e["name"].as_str().expect("env name").to_owned();
        let value = if let Some(v) = e.get("value") {
            v.as_str()
                .unwrap_or_else(|| panic!("{file}: {name} must be a string"))
                .to_owned()
        } else if let Some(r) = e.get("valueFrom").and_then(|v| v.get("secretKeyRef")) {
            let (s, k) = (r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
            secret_value(docs, s, k).unwrap_or_else(|| {
                panic!("{file}: {name} refers to Secret {s} key {k}, which is not in the file")
            })
        } else {
            panic!("{file}: {name}: only value and secretKeyRef are checked here")
        };
        assert!(
            vars.insert(name.clone(), value).is_none(),
            "{file}: {name} set twice"
        );
    }
    let (settings, read) = parse_env(kind, vars.clone(), &file);
    for name in vars.keys() {
        assert!(
            is_read(kind, &read, name),
            "{file}: {name} is set but {} never reads it",
            kind.name
        );
    }

    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    let drain = settings.dispatch.drain_timeout.as_secs();
    assert!(
        grace >= drain + 5,
        "{file}: terminationGracePeriodSeconds {grace} leaves no time after DRAIN_TIMEOUT ({drain}s)"
    );

    let admin = settings.admin.addr.expect("ADMIN_ADDR on").port();
    let ports = c["ports"].as_array().expect("ports");
    let port = ports
        .iter()
        .find(|p| p["name"] == "admin")
        .unwrap_or_else(|| panic!("{file}: a port named admin"));
    assert_eq!(
        port["containerPort"].as_u64(),
        Some(u64::from(admin)),
        "{file}: admin port = ADMIN_ADDR"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{file}: {probe} path");
        assert!(
            get["port"] == "admin" || get["port"].as_u64() == Some(u64::from(admin)),
            "{file}: {probe} on the admin port"
        );
    }
    assert!(
        c["resources"]["requests"].is_object(),
        "{file}: resource requests"
    );
    let sc = &c["securityContext"];
    assert_eq!(
        sc["readOnlyRootFilesystem"], true,
        "{file}: read-only root filesystem"
    );
    assert_eq!(
        sc["allowPrivilegeEscalation"], false,
        "{file}: no privilege escalation"
    );
    assert!(
        sc["capabilities"]["drop"]
            .as_array()
            .is_some_and(|d| d.contains(&json!("ALL"))),
        "{file}: capabilities dropped"
    );
    assert_eq!(
        pod["securityContext"]["runAsNonRoot"], true,
        "{file}: runAsNonRoot"
    );
    assert_eq!(
        pod["securityContext"]["runAsUser"], 65532,
        "{file}: the image's user"
    );
    (deployment.name().to_owned(), vars)
}

/// KEDA owns the replica count of the Deployment it scales: a `spec.replicas` in the manifest
/// would reset it on every re-apply (down to zero, or up from zero) until KEDA's next poll.
fn no_replicas(deployment: &Doc, file: &str) {
    assert!(
        deployment.value["spec"].get("replicas").is_none(),
        "{file}: Deployment {} sets spec.replicas, but KEDA owns the replica count: a re-apply \
         would fight the autoscaler",
        deployment.name()
    );
}

/// Checks `scaledobject.yaml` against the Deployment and its Secrets.
fn check_scaledobject(
    kind: &Kind,
    docs: &[Doc],
    connector_docs: &[Doc],
    deployment: &str,
    env: &BTreeMap<String, String>,
) {
    let file = format!("{}/scaledobject.yaml", kind.dir);
    let so = one(docs, "ScaledObject", &file);
    assert_eq!(
        so.value["spec"]["scaleTargetRef"]["name"].as_str(),
        Some(deployment),
        "{file}: scales the Deployment of connector.yaml"
    );
    let triggers = so.value["spec"]["triggers"].as_array().expect("triggers");
    assert_eq!(triggers.len(), 1, "{file}: one trigger");
    let t = &triggers[0];
    assert_eq!(
        t["type"].as_str(),
        Some(kind.trigger),
        "{file}: trigger type"
    );
    check_source(kind, &t["metadata"], env, &file);
    if let Some(auth) = t["authenticationRef"]["name"].as_str() {
        let ta = docs
            .iter()
            .find(|d| d.kind() == "TriggerAuthentication" && d.name() == auth)
            .unwrap_or_else(|| panic!("{file}: TriggerAuthentication {auth} is not in the file"));
        for r in ta.value["spec"]["secretTargetRef"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let (s, k) = (r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
            assert!(
                secret_value(connector_docs, s, k).is_some(),
                "{file}: {auth} uses Secret {s} key {k}, which connector.yaml does not define"
            );
        }
    }
    for d in docs {
        assert!(
            matches!(d.kind(), "ScaledObject" | "TriggerAuthentication"),
            "{file}: unexpected {}",
            d.kind()
        );
    }
}

/// The trigger watches the same source the connector consumes.
fn check_source(kind: &Kind, metadata: &Value, env: &BTreeMap<String, String>, file: &str) {
    let (key, var) = kind.source;
    let watched = metadata[key]
        .as_str()
        .unwrap_or_else(|| panic!("{file}: trigger metadata {key} missing"));
    let consumed = env
        .get(var)
        .unwrap_or_else(|| panic!("{file}: {var} not set"));
    assert!(
        watched == consumed || watched.ends_with(&format!("/{consumed}")),
        "{file}: the trigger watches {key}={watched:?} but the connector reads {var}={consumed:?}"
    );
}

/// Which Fission a MessageQueueTrigger is written for: what it takes from `spec.podspec`.
#[derive(Clone, Copy)]
enum Fission {
    /// 1.24 and later (`pkg/executor/util/merge_allowlist.go`): only [`FISSION_POD_FIELDS`] and,
    /// in the container named after the trigger, [`FISSION_CONTAINER_FIELDS`]; the admission
    /// webhook refuses a trigger with any other field.
    AllowList,
    /// Up to 1.23 (`MergePodSpec`): the whole PodSpec, containers merged by name.
    WholePodSpec,
}

const FISSION_POD_FIELDS: &[&str] = &[
    "nodeSelector",
    "tolerations",
    "affinity",
    "runtimeClassName",
    "containers",
];
const FISSION_CONTAINER_FIELDS: &[&str] = &["name", "resources"];

/// What the connector gets where Fission does not set it (Kubernetes' default).
const DEFAULT_GRACE_SECONDS: u64 = 30;

/// Checks `mqtrigger.yaml` (or a trigger in `fission/`): the environment Fission builds from it
/// is accepted by the connector, and its `podspec` gives the connector what `connector.yaml`
/// (`connector`) does, as far as `fission` takes it. Returns the KEDA objects Fission would
/// create, for schema validation.
fn check_mqtrigger(
    kind: &Kind,
    docs: &[Doc],
    file: &str,
    connector: &[Doc],
    fission: Fission,
) -> Vec<Doc> {
    let file = file.to_owned();
    let mqt = one(docs, "MessageQueueTrigger", &file);
    let spec = &mqt.value["spec"];
    assert_eq!(
        spec["messageQueueType"].as_str(),
        Some(kind.mqtype),
        "{file}: messageQueueType"
    );
    let s = |k: &str| spec[k].as_str().unwrap_or("").to_owned();
    assert_ne!(
        s("topic"),
        s("respTopic"),
        "{file}: Fission refuses topic == respTopic"
    );

    // Fission's order (§3.3): fixed list, then metadata, then secret keys; the last one wins.
    let function = spec["functionref"]["name"].as_str().unwrap_or("");
    let mut vars = BTreeMap::new();
    for (k, v) in [
        ("TOPIC", s("topic")),
        (
            "HTTP_ENDPOINT",
            format!("http://router.fission/fission-function/{function}"),
        ),
        ("ERROR_TOPIC", s("errorTopic")),
        ("RESPONSE_TOPIC", s("respTopic")),
        ("SOURCE_NAME", mqt.name().to_owned()),
        (
            "MAX_RETRIES",
            spec["maxRetries"].as_u64().unwrap_or(0).to_string(),
        ),
        ("CONTENT_TYPE", s("contentType")),
    ] {
        vars.insert(k.to_owned(), v);
    }
    let metadata = spec["metadata"].as_object().cloned().unwrap_or_default();
    for (k, v) in &metadata {
        vars.insert(to_env_var(k), v.as_str().unwrap_or("").to_owned());
    }
    let mut auth_params = Vec::new();
    if let Some(secret) = spec["secret"].as_str() {
        let keys = secret_keys(docs, secret);
        assert!(
            !keys.is_empty(),
            "{file}: Secret {secret} is not in the file"
        );
        for k in keys {
            vars.insert(to_env_var(&k), secret_value(docs, secret, &k).unwrap());
            auth_params.push(json!({"parameter": k, "name": secret, "key": k}));
        }
    }
    let (settings, read) = parse_env(
        kind,
        vars.clone(),
        &format!("{file} (as Fission deploys it)"),
    );
    check_podspec(mqt, &settings, connector, &file, fission);
    // Metadata is shared with KEDA, so unread variables are expected here; secrets are not:
    // a key neither side uses is a credential copied into the pod for nothing.
    check_source(kind, &spec["metadata"], &vars, &file);
    let name = mqt.name();
    let mut objects = vec![Doc {
        file: format!("{file} (Fission's ScaledObject)"),
        value: json!({
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": {"name": name},
            "spec": {
                "scaleTargetRef": {"name": name},
                "pollingInterval": spec["pollingInterval"],
                "cooldownPeriod": spec["cooldownPeriod"],
                "minReplicaCount": spec["minReplicaCount"],
                "maxReplicaCount": spec["maxReplicaCount"],
                "triggers": [{
                    "type": kind.mqtype,
                    "metadata": Value::Object(metadata),
                }],
            }
        }),
    }];
    if !auth_params.is_empty() {
        objects[0].value["spec"]["triggers"][0]["authenticationRef"] =
            json!({"name": format!("{name}-auth-trigger")});
        objects.push(Doc {
            file: format!("{file} (Fission's TriggerAuthentication)"),
            value: json!({
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "TriggerAuthentication",
                "metadata": {"name": format!("{name}-auth-trigger")},
                "spec": {"secretTargetRef": auth_params},
            }),
        });
    }
    for p in &auth_params {
        let var = to_env_var(p["key"].as_str().unwrap());
        assert!(
            is_read(kind, &read, &var) || KEDA_PARAMS.contains(&p["key"].as_str().unwrap()),
            "{file}: secret key {} is read by neither {} nor KEDA's scaler",
            p["key"],
            kind.name
        );
    }
    objects
}

/// `spec.podspec` of trigger `mqt` against the Deployment of the same broker's `connector.yaml`;
/// `settings` is what the connector makes of the environment Fission gives it.
fn check_podspec(mqt: &Doc, settings: &Settings, connector: &[Doc], file: &str, fission: Fission) {
    let name = mqt.name();
    let ps = &mqt.value["spec"]["podspec"];
    assert!(
        ps.is_object(),
        "{file}: spec.podspec, so that Fission's Deployment gets what connector.yaml gives"
    );
    let deployment = one(connector, "Deployment", "connector.yaml");
    let pod = &deployment.value["spec"]["template"]["spec"];
    let want = &pod["containers"][0];
    let containers = ps["containers"].as_array().expect("podspec containers");
    assert_eq!(
        containers.len(),
        1,
        "{file}: podspec: one container, Fission's"
    );
    let c = &containers[0];
    assert_eq!(
        c["name"].as_str(),
        Some(name),
        "{file}: the podspec container must be named after the trigger, as Fission names its \
         container (another name adds a container, or is ignored)"
    );
    assert_eq!(
        c["resources"], want["resources"],
        "{file}: podspec resources = connector.yaml's"
    );
    let drain = settings.dispatch.drain_timeout.as_secs();
    match fission {
        Fission::AllowList => {
            for k in ps.as_object().unwrap().keys() {
                assert!(
                    FISSION_POD_FIELDS.contains(&k.as_str()),
                    "{file}: podspec.{k}: Fission 1.24 and later refuse the trigger (allowlist: \
                     {FISSION_POD_FIELDS:?}, containers[]: {FISSION_CONTAINER_FIELDS:?})"
                );
            }
            for k in c.as_object().unwrap().keys() {
                assert!(
                    FISSION_CONTAINER_FIELDS.contains(&k.as_str()),
                    "{file}: podspec.containers[].{k}: Fission 1.24 and later refuse the \
                     trigger (containers[] allowlist: {FISSION_CONTAINER_FIELDS:?})"
                );
            }
            assert!(
                DEFAULT_GRACE_SECONDS >= drain + 5,
                "{file}: Fission's pod keeps the default grace period ({DEFAULT_GRACE_SECONDS}s), \
                 which leaves no time after DRAIN_TIMEOUT ({drain}s)"
            );
        }
        Fission::WholePodSpec => {
            for k in ["image", "command", "args", "env", "envFrom"] {
                assert!(
                    c.get(k).is_none(),
                    "{file}: podspec.containers[].{k}: Fission sets it (from its Helm values and the trigger)"
                );
            }
            let admin = settings
                .admin
                .addr
                .expect("ADMIN_ADDR on under Fission")
                .port();
            for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
                let get = &c[probe]["httpGet"];
                assert_eq!(get["path"].as_str(), Some(path), "{file}: {probe} path");
                let port = match &get["port"] {
                    Value::String(named) => {
                        let mut ports = c["ports"].as_array().into_iter().flatten();
                        let found = ports.find(|p| p["name"] == *named);
                        found.and_then(|p| p["containerPort"].as_u64())
                    }
                    number => number.as_u64(),
                };
                assert_eq!(
                    port,
                    Some(u64::from(admin)),
                    "{file}: {probe} on the admin port (ADMIN_ADDR as Fission sets it)"
                );
                assert_eq!(
                    c[probe], want[probe],
                    "{file}: podspec {probe} = connector.yaml's"
                );
            }
            assert_eq!(
                c["securityContext"], want["securityContext"],
                "{file}: podspec container securityContext = connector.yaml's"
            );
            for k in [
                "securityContext",
                "terminationGracePeriodSeconds",
                "automountServiceAccountToken",
            ] {
                if let Some(v) = pod.get(k) {
                    assert_eq!(
                        ps.get(k),
                        Some(v),
                        "{file}: podspec.{k} = connector.yaml's pod {k}"
                    );
                }
            }
            let grace = ps["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or(DEFAULT_GRACE_SECONDS);
            assert!(
                grace >= drain + 5,
                "{file}: podspec terminationGracePeriodSeconds {grace} leaves no time after \
                 DRAIN_TIMEOUT ({drain}s)"
            );
        }
    }
}

/// Secret keys that are KEDA scaler parameters (Fission passes them to both).
const KEDA_PARAMS: &[&str] = &[
    "host",
    "password",
    "username",
    "sasl",
    "tls",
    "ca",
    "cert",
    "key",
    "awsAccessKeyID",
    "awsSecretAccessKey",
    "awsSessionToken",
    "GoogleApplicationCredentials",
];

fn tool(name: &str) -> Command {
    let ok = Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{name} is not installed: pip install kubernetes-validate check-jsonschema \
         (the example manifests are validated offline with them)"
    );
    Command::new(name)
}

const CORE_API_VERSIONS: &[&str] = &["v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2"];

/// Core kinds validate against Kubernetes' own schemas; each one must be reported as passed.
fn validate_core(files: &[PathBuf], docs: &[Doc]) {
    let relative: Vec<&Path> = files
        .iter()
        .map(|f| f.strip_prefix(examples()).unwrap_or(f))
        .collect();
    let out = tool("kubernetes-validate")
        .current_dir(examples())
        .arg("--strict")
        .args(&relative)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kubernetes-validate failed:\n{stdout}\n{stderr}"
    );
    for d in docs {
        let api = d.value["apiVersion"].as_str().unwrap_or("");
        if CORE_API_VERSIONS.contains(&api) {
            let needle = format!(
                "{} passed for resource {}/{}",
                d.file,
                d.kind().to_lowercase(),
                d.name()
            );
            assert!(
                stdout.contains(&needle),
                "kubernetes-validate did not validate {}/{} in {}:\n{stdout}\n{stderr}",
                d.kind(),
                d.name(),
                d.file
            );
        }
    }
}

/// Custom resources validate against the schemas the project keeps.
fn validate_custom(docs: &[Doc]) {
    let schemas = examples().join("schemas");
    let dir = std::env::temp_dir().join(format!("examples-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut by_schema: BTreeMap<&str, Vec<PathBuf>> = BTreeMap::new();
    let mut names = BTreeMap::new();
    for (i, d) in docs.iter().enumerate() {
        let schema = match d.kind() {
            "ScaledObject" => "scaledobject.json",
            "TriggerAuthentication" => "triggerauthentication.json",
            "MessageQueueTrigger" => "messagequeuetrigger.json",
            _ => continue,
        };
        let path = dir.join(format!("{i}-{}-{}.json", d.kind(), d.name()));
        std::fs::write(&path, serde_json::to_vec_pretty(&d.value).unwrap()).unwrap();
        names.insert(path.display().to_string(), d.file.clone());
        by_schema.entry(schema).or_default().push(path);
    }
    assert!(
        by_schema.len() == 3,
        "every custom kind has examples: {by_schema:?}"
    );
    for (schema, files) in by_schema {
        let out = tool("check-jsonschema")
            .arg("--schemafile")
            .arg(schemas.join(schema))
            .args(&files)
            .output()
            .unwrap();
        let mut report = String::from_utf8_lossy(&out.stdout).into_owned();
        report.push_str(&String::from_utf8_lossy(&out.stderr));
        for (tmp, origin) in &names {
            report = report.replace(tmp.as_str(), origin);
        }
        assert!(out.status.success(), "{schema}:\n{report}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every MessageQueueTrigger's `spec.podspec` is a valid PodSpec: validated offline against
/// Kubernetes' schemas as the spec of a Pod (`kubernetes-validate --strict`: no unknown field).
fn validate_podspecs(docs: &[Doc]) {
    let dir = std::env::temp_dir().join(format!("examples-check-podspec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        if d.kind() != "MessageQueueTrigger" {
            continue;
        }
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": d.name()},
            "spec": d.value["spec"]["podspec"],
        });
        let path = dir.join(format!("{i}-{}.json", d.name()));
        std::fs::write(&path, serde_json::to_vec_pretty(&pod).unwrap()).unwrap();
        files.push((path, d));
    }
    assert!(!files.is_empty(), "MessageQueueTriggers with a podspec");
    let out = tool("kubernetes-validate")
        .arg("--strict")
        .args(files.iter().map(|(p, _)| p))
        .output()
        .unwrap();
    let mut report = String::from_utf8_lossy(&out.stdout).into_owned();
    report.push_str(&String::from_utf8_lossy(&out.stderr));
    for (path, d) in &files {
        report = report.replace(&path.display().to_string(), &d.file);
    }
    let invalid: Vec<&str> = files
        .iter()
        .filter(|(_, d)| !report.contains(&format!("{} passed for resource pod/", d.file)))
        .map(|(_, d)| d.file.as_str())
        .collect();
    assert!(
        out.status.success() && invalid.is_empty(),
        "spec.podspec is not a valid PodSpec in {invalid:?}:\n{report}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The container of Deployment `name`, its environment (Secrets resolved) and its pod labels.
fn container_env(docs: &[Doc], name: &str) -> (Value, BTreeMap<String, String>, Value) {
    let file = "custom-connector/deploy.yaml";
    let d = docs
        .iter()
        .find(|d| d.kind() == "Deployment" && d.name() == name)
        .unwrap_or_else(|| panic!("{file}: Deployment {name}"));
    let pod = &d.value["spec"]["template"];
    let c = pod["spec"]["containers"][0].clone();
    let mut env = BTreeMap::new();
    for e in c["env"].as_array().expect("env") {
        let var = e["name"].as_str().unwrap().to_owned();
        let value = match (e.get("value"), e["valueFrom"].get("secretKeyRef")) {
            (Some(v), _) => v.as_str().expect("string value").to_owned(),
            (_, Some(r)) => secret_value(
                docs,
                r["name"].as_str().unwrap(),
                r["key"].as_str().unwrap(),
            )
            .unwrap_or_else(|| panic!("{file}: {var}: the Secret key is not in the file")),
            _ => panic!("{file}: {var}: only value and secretKeyRef are checked here"),
        };
        assert!(
            env.insert(var, value).is_none(),
            "{file}: {name} sets a variable twice"
        );
    }
    (c, env, pod["metadata"]["labels"].clone())
}

/// `examples/custom-connector/deploy.yaml`: the connector and its external-push scaler (the
/// same image; the scaler in `scaler` mode), the scaler's Service, and a ScaledObject that
/// reaches the scaler through that Service and scales the connector.
fn check_custom_connector(docs: &[Doc]) {
    let file = "custom-connector/deploy.yaml";
    // The example's own variables (examples/custom-connector/src/*.rs); the common ones are
    // checked by the core parser below.
    const CONNECTOR_VARS: &[&str] = &[
        "DATABASE_URL",
        "MAX_IN_FLIGHT",
        "CLAIM_TIMEOUT",
        "POLL_INTERVAL",
    ];
    const SCALER_VARS: &[&str] = &["DATABASE_URL", "TOPIC"];

    let so = one(docs, "ScaledObject", file);
    let target = so.value["spec"]["scaleTargetRef"]["name"].as_str().unwrap();
    for d in docs
        .iter()
        .filter(|d| d.kind() == "Deployment" && d.name() == target)
    {
        no_replicas(d, file);
    }
    let (connector, env, _) = container_env(docs, target);
    let recording = RecordingEnv::new(env.clone());
    Settings::from_env(&recording).unwrap_or_else(|e| panic!("{file}: {target}: {e}"));
    let read = recording.into_read();
    for var in env.keys() {
        assert!(
            read.contains(var) || CONNECTOR_VARS.contains(&var.as_str()),
            "{file}: {target} sets {var}, which the connector never reads"
        );
    }
    assert!(
        env.contains_key("DATABASE_URL"),
        "{file}: {target}: DATABASE_URL"
    );

    let scaler_deployments: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.kind() == "Deployment" && d.name() != target)
        .collect();
    assert_eq!(scaler_deployments.len(), 1, "{file}: one scaler Deployment");
    let (scaler, scaler_env, labels) = container_env(docs, scaler_deployments[0].name());
    assert_eq!(
        scaler["image"], connector["image"],
        "{file}: the scaler is the connector's binary"
    );
    assert_eq!(scaler["args"], json!(["scaler"]), "{file}: scaler mode");
    let recording = RecordingEnv::new(scaler_env.clone());
    let settings = connector_core::scaler::ScalerSettings::from_env(&recording)
        .unwrap_or_else(|e| panic!("{file}: scaler: {e}"));
    let read = recording.into_read();
    for var in scaler_env.keys() {
        assert!(
            read.contains(var) || SCALER_VARS.contains(&var.as_str()),
            "{file}: the scaler is given {var}, which it never reads"
        );
    }
    for var in SCALER_VARS {
        assert_eq!(
            scaler_env.get(*var),
            env.get(*var),
            "{file}: scaler and connector {var}"
        );
    }
    let grpc = scaler["ports"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "grpc"))
        .unwrap_or_else(|| panic!("{file}: the scaler's grpc port"));
    assert_eq!(
        grpc["containerPort"].as_u64(),
        Some(u64::from(settings.addr.port())),
        "{file}: port = SCALER_ADDR"
    );

    let service = one(docs, "Service", file);
    let selector = service.value["spec"]["selector"]
        .as_object()
        .expect("selector");
    for (k, v) in selector {
        assert_eq!(&labels[k], v, "{file}: the Service selects the scaler pods");
    }
    let port = &service.value["spec"]["ports"][0];
    assert_eq!(
        port["targetPort"], "grpc",
        "{file}: Service → scaler grpc port"
    );
    let namespace = service.value["metadata"]["namespace"]
        .as_str()
        .expect("namespace");
    let address = format!(
        "{}.{namespace}.svc.cluster.local:{}",
        service.name(),
        port["port"]
    );

    let trigger = &so.value["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "external-push", "{file}: trigger type");
    assert_eq!(
        trigger["metadata"]["scalerAddress"],
        json!(address),
        "{file}: scalerAddress reaches the Service"
    );
    for key in ["targetBacklog", "activationBacklog"] {
        if let Some(v) = trigger["metadata"].get(key) {
            assert!(
                v.as_str().and_then(|v| v.parse::<u64>().ok()).is_some(),
                "{file}: {key} must be an integer in a string"
            );
        }
    }
    for d in docs {
        assert!(
            matches!(
                d.kind(),
                "Secret" | "Deployment" | "Service" | "ScaledObject"
            ),
            "{file}: unexpected {}",
            d.kind()
        );
    }
}

fn check_helm_values(docs: &[Doc]) {
    let values = &docs[0].value["mqt_keda"]["connector_images"];
    let map = values.as_object().expect("mqt_keda.connector_images");
    let keys: BTreeSet<&str> = map.keys().map(String::as_str).collect();
    let ours: BTreeSet<&str> = KINDS.iter().map(|k| k.helm_key).collect();
    assert_eq!(
        keys, ours,
        "fission/values.yaml: one entry per connector, Fission's key names"
    );
    for k in KINDS {
        let v = &values[k.helm_key];
        assert_eq!(
            v["image"].as_str(),
            Some(format!("{REGISTRY}/keda-{}", k.name).as_str()),
            "fission/values.yaml: {} image",
            k.helm_key
        );
        assert_eq!(
            v["tag"].as_str(),
            Some(VERSION),
            "fission/values.yaml: {} tag",
            k.helm_key
        );
    }
}

#[test]
fn examples_are_valid_and_match_the_connectors() {
    let base = examples();
    // Every connector has examples, and every example directory is a connector's.
    let connectors: BTreeSet<String> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with("-http-connector"))
        .collect();
    let known: BTreeSet<String> = KINDS.iter().map(|k| k.name.to_owned()).collect();
    assert_eq!(
        connectors, known,
        "a connector crate without examples (or the reverse)"
    );

    let mut all_docs = Vec::new();
    let mut manifest_files = Vec::new();
    // connector.yaml and mqtrigger.yaml of each broker, for the triggers in fission/.
    let mut by_dir = BTreeMap::new();
    for k in KINDS {
        let dir = base.join(k.dir);
        let load_one = |f: &str| {
            let docs = load(&dir.join(f));
            assert!(!docs.is_empty(), "{}/{f} is empty", k.dir);
            docs
        };
        let connector = load_one("connector.yaml");
        let scaled = load_one("scaledobject.yaml");
        let trigger = load_one("mqtrigger.yaml");
        let (deployment, env) = check_connector(k, &connector);
        check_scaledobject(k, &scaled, &connector, &deployment, &env);
        all_docs.extend(check_mqtrigger(
            k,
            &trigger,
            &format!("{}/mqtrigger.yaml", k.dir),
            &connector,
            Fission::AllowList,
        ));
        for f in ["connector.yaml", "scaledobject.yaml", "mqtrigger.yaml"] {
            manifest_files.push(dir.join(f));
        }
        all_docs.extend(connector.iter().cloned());
        all_docs.extend(scaled);
        all_docs.extend(trigger.iter().cloned());
        by_dir.insert(k.dir, (connector, trigger));
    }

    // fission/: besides values.yaml, triggers for Fission up to 1.23, each the trigger of a
    // broker's mqtrigger.yaml with a whole podspec.
    let mut whole_podspec = 0;
    let mut fission_files: Vec<PathBuf> = std::fs::read_dir(base.join("fission"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml" || e == "yml")
                && !p.ends_with("fission/values.yaml")
        })
        .collect();
    fission_files.sort();
    for path in fission_files {
        let docs = load(&path);
        let file = docs
            .first()
            .unwrap_or_else(|| panic!("{} is empty", path.display()))
            .file
            .clone();
        let mqt = one(&docs, "MessageQueueTrigger", &file);
        let mqtype = &mqt.value["spec"]["messageQueueType"];
        let k = KINDS
            .iter()
            .find(|k| *mqtype == k.mqtype)
            .unwrap_or_else(|| panic!("{file}: no connector for messageQueueType {mqtype}"));
        let (connector, trigger) = &by_dir[k.dir];
        let without_podspec = |d: &Doc| {
            let mut v = d.value.clone();
            v["spec"].as_object_mut().unwrap().remove("podspec");
            v
        };
        assert_eq!(
            without_podspec(mqt),
            without_podspec(one(trigger, "MessageQueueTrigger", &file)),
            "{file}: the trigger of {}/mqtrigger.yaml; only the podspec differs",
            k.dir
        );
        for d in docs.iter().filter(|d| d.kind() != "MessageQueueTrigger") {
            assert!(
                trigger.iter().any(|t| t.value == d.value),
                "{file}: {} {} differs from {}/mqtrigger.yaml's",
                d.kind(),
                d.name(),
                k.dir
            );
        }
        all_docs.extend(check_mqtrigger(
            k,
            &docs,
            &file,
            connector,
            Fission::WholePodSpec,
        ));
        manifest_files.push(path);
        all_docs.extend(docs);
        whole_podspec += 1;
    }
    assert!(
        whole_podspec > 0,
        "fission/: a trigger for Fission up to 1.23, whose podspec carries the probes"
    );
    check_helm_values(&load(&base.join("fission/values.yaml")));
    let custom = base.join("custom-connector/deploy.yaml");
    let docs = load(&custom);
    check_custom_connector(&docs);
    manifest_files.push(custom);
    all_docs.extend(docs);

    // No stray manifests that escape these checks.
    let mut everything = Vec::new();
    yaml_files(&base, &mut everything);
    for f in &everything {
        assert!(
            manifest_files.contains(f)
                || f.ends_with("fission/values.yaml")
                // Prometheus rules, not Kubernetes manifests: tests/monitoring.rs checks them.
                || f.parent().is_some_and(|d| d.ends_with("monitoring")),
            "{} is not covered by this test",
            f.display()
        );
    }

    validate_core(&manifest_files, &all_docs);
    validate_custom(&all_docs);
    validate_podspecs(&all_docs);
}

/// The GitHub workflows cannot run here; at least they must be valid workflows (check-jsonschema
/// carries GitHub's workflow schema, so this works offline).
#[test]
fn github_workflows_are_valid() {
    let dir = root().join(".github/workflows");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 2, "ci.yml and release.yml");
    let out = tool("check-jsonschema")
        .args(["--builtin-schema", "vendor.github-workflows"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
