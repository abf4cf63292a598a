//! State on an MQTT broker, with Home Assistant MQTT discovery.
//!
//! Topics, with `B` = `base_topic` and `N` = `node_id`:
//! - `B/N/status`: `online` / `offline` (retained; `offline` is also the
//!   last will, so a crashed daemon shows as unavailable).
//! - `B/N/<job>/state`: retained JSON with `status`, `last_success` (RFC
//!   3339), `last_size` (bytes), `duration_s`, `snapshot`, `snapshot_count`,
//!   `runs`, `failures`, `running`.
//! - `B/N/<job>/run`: publishing `PRESS` here runs the job now.
//! - `<discovery_prefix>/sensor/<id>/config` and
//!   `<discovery_prefix>/button/<id>/config`: retained discovery documents
//!   for the sensors (last success, last status, last size, duration,
//!   snapshot count) and the "backup now" button of every job; removed jobs
//!   get an empty retained config so Home Assistant drops them.
//!
//! The connection is plain TCP (a broker on the local network or loopback).
//! Broker failures are logged and retried; they never affect backups.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::daemon::RunNowSender;
use super::status::{JobStatus, StatusStore};
use crate::secret::Secret;

/// How many requests may wait for the MQTT event loop.
const QUEUE: usize = 512;
/// The pause after a broker connection error before trying again.
const RECONNECT_DELAY: Duration = Duration::from_secs(5);
/// The payload of the "backup now" button.
const PRESS: &str = "PRESS";

/// Where and how to publish.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MqttSettings {
    /// Broker host name or address.
    pub host: String,
    /// Broker port (1883 usually).
    pub port: u16,
    /// User name, if the broker wants one.
    pub username: Option<String>,
    /// Password, if the broker wants one.
    pub password: Option<Secret>,
    /// The MQTT client id.
    pub client_id: String,
    /// Home Assistant's discovery prefix (`homeassistant`).
    pub discovery_prefix: String,
    /// The root of synback's own topics (`synback`).
    pub base_topic: String,
    /// This machine's name in topics and in Home Assistant's device list.
    pub node_id: String,
}

impl MqttSettings {
    /// Settings for `host:port` with the usual prefixes; `node_id` names
    /// this machine (letters, digits and `_` are kept, the rest become `_`).
    pub fn new(host: impl Into<String>, port: u16, node_id: &str) -> Self {
        let node_id = object_id(node_id);
        Self {
            host: host.into(),
            port,
            username: None,
            password: None,
            client_id: format!("synback-{node_id}"),
            discovery_prefix: "homeassistant".to_owned(),
            base_topic: "synback".to_owned(),
            node_id,
        }
    }

    fn availability_topic(&self) -> String {
        format!("{}/{}/status", self.base_topic, self.node_id)
    }

    fn job_topic(&self, job: &str, leaf: &str) -> String {
        format!(
            "{}/{}/{}/{leaf}",
            self.base_topic,
            self.node_id,
            object_id(job)
        )
    }
}

/// Letters and digits (lower-cased) and `_`; everything else becomes `_`.
fn object_id(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// A running MQTT publisher.
pub(crate) struct Publisher {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// Starts publishing the store's state to the broker in `settings`.
    pub(crate) fn start(
        settings: MqttSettings,
        store: Arc<StatusStore>,
        run_now: RunNowSender,
    ) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(publish_loop(settings, store, run_now, stop.clone()));
        Self { stop, task }
    }

    /// Publishes `offline`, disconnects and waits for the task.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        if let Err(error) = self.task.await {
            tracing::warn!(error = %error, "MQTT task failed");
        }
    }
}

fn options(settings: &MqttSettings) -> MqttOptions {
    let mut options = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_last_will(LastWill::new(
        settings.availability_topic(),
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(user) = &settings.username {
        let password = settings.password.as_ref().map_or("", Secret::expose);
        options.set_credentials(user, password);
    }
    options
}

struct Session {
    settings: MqttSettings,
    client: AsyncClient,
    store: Arc<StatusStore>,
    run_now: RunNowSender,
    announced: BTreeSet<String>,
    stop: CancellationToken,
}

async fn publish_loop(
    settings: MqttSettings,
    store: Arc<StatusStore>,
    run_now: RunNowSender,
    stop: CancellationToken,
) {
    let (client, mut events) = AsyncClient::new(options(&settings), QUEUE);
    let mut changes = store.subscribe();
    let mut session = Session {
        settings,
        client,
        store,
        run_now,
        announced: BTreeSet::new(),
        stop: stop.clone(),
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            event = events.poll() => session.on_event(event).await,
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                session.publish_all();
            }
        }
    }
    session.goodbye(&mut events).await;
}

impl Session {
    async fn on_event(&mut self, event: Result<Event, rumqttc::ConnectionError>) {
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!(host = %self.settings.host, "MQTT connected");
                self.announced.clear();
                self.subscribe();
                self.publish_all();
            }
            Ok(Event::Incoming(Packet::Publish(message))) => {
                self.on_command(&message.topic, &message.payload).await;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(host = %self.settings.host, error = %error, "MQTT connection failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(RECONNECT_DELAY) => {}
                    () = self.stop.cancelled() => {}
                }
            }
        }
    }

    fn subscribe(&self) {
        let topic = format!(
            "{}/{}/+/run",
            self.settings.base_topic, self.settings.node_id
        );
        if let Err(error) = self.client.try_subscribe(topic, QoS::AtLeastOnce) {
            tracing::warn!(error = %error, "MQTT subscribe failed");
        }
    }

    async fn on_command(&self, topic: &str, payload: &[u8]) {
        if payload != PRESS.as_bytes() {
            return;
        }
        let jobs = self.store.snapshot().jobs;
        let Some(job) = jobs
            .keys()
            .find(|job| self.settings.job_topic(job, "run") == topic)
        else {
            return;
        };
        tracing::info!(job = %job, "run-now requested over MQTT");
        // The daemon logs its decision; only a daemon that stops is news.
        if self.run_now.request(job).await.is_none() {
            tracing::warn!(job = %job, "daemon is stopping; MQTT run-now dropped");
        }
    }

    /// Announces new jobs, withdraws removed ones, publishes every state.
    fn publish_all(&mut self) {
        let status = self.store.snapshot();
        let current: BTreeSet<String> = status.jobs.keys().cloned().collect();
        for gone in self.announced.difference(&current) {
            for topic in discovery_topics(&self.settings, gone) {
                self.publish(topic, Vec::new());
            }
        }
        for job in current.difference(&self.announced) {
            for (topic, config) in discovery(&self.settings, job) {
                self.publish(topic, config.to_string().into_bytes());
            }
        }
        self.announced = current;
        self.publish(self.settings.availability_topic(), b"online".to_vec());
        for (job, state) in &status.jobs {
            let topic = self.settings.job_topic(job, "state");
            self.publish(topic, state_json(state).to_string().into_bytes());
        }
    }

    fn publish(&self, topic: String, payload: Vec<u8>) {
        if let Err(error) = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, true, payload)
        {
            tracing::warn!(error = %error, "MQTT publish queue full; message dropped");
        }
    }

    /// Publishes `offline` and disconnects, polling the event loop briefly
    /// so the messages leave.
    async fn goodbye(&self, events: &mut EventLoop) {
        self.publish(self.settings.availability_topic(), b"offline".to_vec());
        if let Err(error) = self.client.try_disconnect() {
            tracing::debug!(error = %error, "MQTT disconnect not queued");
        }
        let drain = async {
            while let Ok(event) = events.poll().await {
                if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(2), drain)
            .await
            .is_err()
        {
            tracing::debug!("MQTT disconnect timed out");
        }
    }
}

/// The retained state document of one job.
fn state_json(job: &JobStatus) -> serde_json::Value {
    json!({
        "status": job.last_status.map(super::RunStatus::as_str),
        "last_success": job.last_success.map(|t| t.to_rfc3339()),
        "last_size": job.last_bytes_stored,
        "duration_s": job.last_duration_s,
        "snapshot": job.last_snapshot,
        "snapshot_count": job.snapshot_count,
        "runs": job.runs,
        "failures": job.failures,
        "running": job.running,
    })
}

/// One sensor of a job: key, name, value template, extra discovery fields.
type Sensor = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// The sensors of a job.
const SENSORS: [Sensor; 5] = [
    (
        "last_success",
        "last success",
        "{{ value_json.last_success }}",
        &[("device_class", "timestamp")],
    ),
    ("last_status", "last status", "{{ value_json.status }}", &[]),
    (
        "last_size",
        "last size",
        "{{ value_json.last_size }}",
        &[("device_class", "data_size"), ("unit_of_measurement", "B")],
    ),
    (
        "duration",
        "duration",
        "{{ value_json.duration_s }}",
        &[("device_class", "duration"), ("unit_of_measurement", "s")],
    ),
    (
        "snapshot_count",
        "snapshots",
        "{{ value_json.snapshot_count }}",
        &[],
    ),
];

fn unique_id(settings: &MqttSettings, job: &str, key: &str) -> String {
    format!("synback_{}_{}_{key}", settings.node_id, object_id(job))
}

fn discovery_topics(settings: &MqttSettings, job: &str) -> Vec<String> {
    let prefix = &settings.discovery_prefix;
    let mut topics: Vec<String> = SENSORS
        .iter()
        .map(|(key, ..)| format!("{prefix}/sensor/{}/config", unique_id(settings, job, key)))
        .collect();
    topics.push(format!(
        "{prefix}/button/{}/config",
        unique_id(settings, job, "run")
    ));
    topics
}

/// The discovery documents of a job's sensors and button, with their topics.
fn discovery(settings: &MqttSettings, job: &str) -> Vec<(String, serde_json::Value)> {
    let device = json!({
        "identifiers": [format!("synback_{}", settings.node_id)],
        "name": format!("synback {}", settings.node_id),
        "manufacturer": "synback",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    let topics = discovery_topics(settings, job);
    let mut docs = Vec::new();
    for ((key, name, template, extra), topic) in SENSORS.iter().zip(&topics) {
        let mut doc = json!({
            "name": format!("{job} {name}"),
            "unique_id": unique_id(settings, job, key),
            "state_topic": settings.job_topic(job, "state"),
            "value_template": template,
            "availability_topic": settings.availability_topic(),
            "device": device,
        });
        for (field, value) in *extra {
            doc[*field] = json!(value);
        }
        docs.push((topic.clone(), doc));
    }
    if let Some(topic) = topics.last() {
        let button = json!({
            "name": format!("{job} backup now"),
            "unique_id": unique_id(settings, job, "run"),
            "command_topic": settings.job_topic(job, "run"),
            "payload_press": PRESS,
            "availability_topic": settings.availability_topic(),
            "device": device,
        });
        docs.push((topic.clone(), button));
    }
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_names_every_sensor_and_the_button() {
        let settings = MqttSettings::new("localhost", 1883, "Pi-4");
        let docs = discovery(&settings, "home dir");
        assert_eq!(docs.len(), 6);
        assert_eq!(
            docs[0].0,
            "homeassistant/sensor/synback_pi_4_home_dir_last_success/config"
        );
        assert_eq!(docs[0].1["device_class"], "timestamp");
        assert_eq!(docs[0].1["state_topic"], "synback/pi_4/home_dir/state");
        assert_eq!(
            docs[5].0,
            "homeassistant/button/synback_pi_4_home_dir_run/config"
        );
        assert_eq!(docs[5].1["command_topic"], "synback/pi_4/home_dir/run");
    }
}
