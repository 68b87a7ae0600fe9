//! Dify's JSON shapes for runs: blocking answers of `/v1/workflows/run`,
//! `/v1/chat-messages`, `/v1/completion-messages`, and their SSE frames
//! (`workflow_started`, `node_started`, `node_finished`, `workflow_finished`, `message`,
//! `message_end`, `event: ping`). Pure functions of a [`RunSpec`].

use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use super::ids::{fnv1a, Entropy};

/// Dify's keepalive frame in a stream.
pub const PING_FRAME: &[u8] = b"event: ping\n\n";

/// Which run endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunKind {
    /// `POST /v1/workflows/run`.
    Workflow,
    /// `POST /v1/chat-messages`.
    Chat,
    /// `POST /v1/completion-messages`.
    Completion,
}

/// Everything that determines a run's answer bytes.
#[derive(Clone, Debug)]
pub(crate) struct RunSpec {
    pub(crate) kind: RunKind,
    /// Planned service time (sampled or `X-Sim-Service-Time`, plus contention slowdown).
    pub(crate) service: Duration,
    /// Node events (workflow) or answer chunks (chat/completion).
    pub(crate) events: usize,
    pub(crate) task_id: String,
    /// `workflow_run_id` or `message_id`.
    pub(crate) run_id: String,
    pub(crate) workflow_id: String,
    pub(crate) conversation_id: String,
    pub(crate) created_at: i64,
    pub(crate) inputs: Value,
}

impl RunSpec {
    /// Builds the ids of a run from the request's entropy; a chat keeps the client's
    /// `conversation_id` when it sent one.
    pub(crate) fn new(
        kind: RunKind,
        service: Duration,
        events: usize,
        entropy: &mut Entropy,
        inputs: Value,
        conversation_id: Option<String>,
    ) -> Self {
        let task_id = entropy.uuid();
        let run_id = entropy.uuid();
        let workflow_id = entropy.uuid();
        let fresh_conversation = entropy.uuid();
        RunSpec {
            kind,
            service,
            events,
            task_id,
            run_id,
            workflow_id,
            conversation_id: conversation_id.filter(|c| !c.is_empty()).unwrap_or(fresh_conversation),
            created_at: entropy.created_at(),
            inputs,
        }
    }

    fn finished_at(&self) -> i64 {
        self.created_at + self.service.as_secs_f64().ceil() as i64
    }

    fn elapsed(&self) -> f64 {
        self.service.as_secs_f64()
    }

    fn total_tokens(&self) -> u64 {
        12 + 37 * self.events as u64
    }

    fn usage(&self) -> Value {
        let total = self.total_tokens();
        json!({
            "prompt_tokens": 12,
            "completion_tokens": total - 12,
            "total_tokens": total,
            "currency": "USD",
            "latency": self.elapsed(),
        })
    }

    /// The full answer text (all chunks).
    fn answer(&self) -> String {
        (0..self.events).map(answer_chunk).collect()
    }

    fn outputs(&self) -> Value {
        json!({ "text": self.answer(), "inputs": self.inputs })
    }

    /// Id of the `i`-th node execution (stable for a given run id).
    fn node_execution_id(&self, i: usize) -> String {
        Entropy::new(Some(fnv1a(format!("{}/{i}", self.run_id).as_bytes()))).uuid()
    }

    fn node_common(&self, i: usize) -> Value {
        let (node_type, title) = if i == 0 {
            ("start", "Start".to_owned())
        } else if i + 1 == self.events {
            ("end", "End".to_owned())
        } else {
            ("llm", format!("LLM {i}"))
        };
        let predecessor = if i == 0 { Value::Null } else { Value::String(node_id(i - 1)) };
        json!({
            "id": self.node_execution_id(i),
            "node_id": node_id(i),
            "node_type": node_type,
            "title": title,
            "index": i + 1,
            "predecessor_node_id": predecessor,
            "inputs": self.inputs,
            "created_at": self.created_at + self.node_start_at(i).as_secs() as i64,
        })
    }

    /// When the `k`-th of the timeline's `slots` evenly spaced events is due: `k·T/slots`.
    pub(crate) fn tick(&self, k: usize, slots: usize) -> Duration {
        if slots == 0 {
            Duration::ZERO
        } else {
            self.service.mul_f64(k as f64 / slots as f64)
        }
    }

    /// When `node_started` of node `i` is due (its `2N` node events are evenly spaced).
    pub(crate) fn node_start_at(&self, i: usize) -> Duration {
        self.tick(2 * i + 1, 2 * self.events)
    }

    /// When `node_finished` of node `i` is due.
    pub(crate) fn node_finish_at(&self, i: usize) -> Duration {
        self.tick(2 * i + 2, 2 * self.events)
    }
}

fn node_id(i: usize) -> String {
    (1_711_528_708_000u64 + i as u64).to_string()
}

/// The `i`-th piece of a simulated answer.
pub(crate) fn answer_chunk(i: usize) -> String {
    format!("Simulated answer part {}. ", i + 1)
}

/// One SSE frame: `data: {json}\n\n`.
pub(crate) fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// The blocking answer of a run.
pub(crate) fn blocking(spec: &RunSpec) -> Value {
    match spec.kind {
        RunKind::Workflow => json!({
            "task_id": spec.task_id,
            "workflow_run_id": spec.run_id,
            "data": workflow_data(spec),
        }),
        RunKind::Chat | RunKind::Completion => {
            let mut v = json!({
                "event": "message",
                "task_id": spec.task_id,
                "id": spec.run_id,
                "message_id": spec.run_id,
                "mode": mode(spec),
                "answer": spec.answer(),
                "metadata": { "usage": spec.usage(), "retriever_resources": [] },
                "created_at": spec.created_at,
            });
            if spec.kind == RunKind::Chat {
                v["conversation_id"] = json!(spec.conversation_id);
            }
            v
        }
    }
}

fn mode(spec: &RunSpec) -> &'static str {
    match spec.kind {
        RunKind::Workflow => "workflow",
        RunKind::Chat => "chat",
        RunKind::Completion => "completion",
    }
}

fn workflow_data(spec: &RunSpec) -> Value {
    json!({
        "id": spec.run_id,
        "workflow_id": spec.workflow_id,
        "status": "succeeded",
        "outputs": spec.outputs(),
        "error": null,
        "elapsed_time": spec.elapsed(),
        "total_tokens": spec.total_tokens(),
        "total_steps": spec.events,
        "created_at": spec.created_at,
        "finished_at": spec.finished_at(),
    })
}

/// `workflow_started` frame.
pub(crate) fn workflow_started(spec: &RunSpec) -> Value {
    json!({
        "event": "workflow_started",
        "task_id": spec.task_id,
        "workflow_run_id": spec.run_id,
        "data": {
            "id": spec.run_id,
            "workflow_id": spec.workflow_id,
            "sequence_number": 1,
            "inputs": spec.inputs,
            "created_at": spec.created_at,
        },
    })
}

/// `node_started` frame of node `i`.
pub(crate) fn node_started(spec: &RunSpec, i: usize) -> Value {
    json!({
        "event": "node_started",
        "task_id": spec.task_id,
        "workflow_run_id": spec.run_id,
        "data": spec.node_common(i),
    })
}

/// `node_finished` frame of node `i`.
pub(crate) fn node_finished(spec: &RunSpec, i: usize) -> Value {
    let mut data = spec.node_common(i);
    data["outputs"] = json!({ "text": answer_chunk(i) });
    data["process_data"] = Value::Null;
    data["status"] = json!("succeeded");
    data["error"] = Value::Null;
    data["elapsed_time"] = json!((spec.node_finish_at(i) - spec.node_start_at(i)).as_secs_f64());
    data["execution_metadata"] = json!({ "total_tokens": 37, "total_price": "0.0001", "currency": "USD" });
    data["finished_at"] = json!(spec.created_at + spec.node_finish_at(i).as_secs() as i64);
    json!({
        "event": "node_finished",
        "task_id": spec.task_id,
        "workflow_run_id": spec.run_id,
        "data": data,
    })
}

/// `workflow_finished` frame.
pub(crate) fn workflow_finished(spec: &RunSpec) -> Value {
    json!({
        "event": "workflow_finished",
        "task_id": spec.task_id,
        "workflow_run_id": spec.run_id,
        "data": workflow_data(spec),
    })
}

/// `message` frame carrying answer chunk `i` (chat and completion).
pub(crate) fn message_chunk(spec: &RunSpec, i: usize) -> Value {
    let mut v = json!({
        "event": "message",
        "task_id": spec.task_id,
        "id": spec.run_id,
        "message_id": spec.run_id,
        "answer": answer_chunk(i),
        "created_at": spec.created_at,
    });
    if spec.kind == RunKind::Chat {
        v["conversation_id"] = json!(spec.conversation_id);
    }
    v
}

/// `message_end` frame.
pub(crate) fn message_end(spec: &RunSpec) -> Value {
    let mut v = json!({
        "event": "message_end",
        "task_id": spec.task_id,
        "id": spec.run_id,
        "message_id": spec.run_id,
        "metadata": { "usage": spec.usage(), "retriever_resources": [] },
    });
    if spec.kind == RunKind::Chat {
        v["conversation_id"] = json!(spec.conversation_id);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: RunKind) -> RunSpec {
        RunSpec::new(
            kind,
            Duration::from_millis(1500),
            3,
            &mut Entropy::new(Some(9)),
            json!({"q": "x"}),
            None,
        )
    }

    #[test]
    fn workflow_blocking_shape() {
        let v = blocking(&spec(RunKind::Workflow));
        assert_eq!(v["data"]["status"], "succeeded");
        assert_eq!(v["data"]["id"], v["workflow_run_id"]);
        assert_eq!(v["data"]["outputs"]["inputs"]["q"], "x");
        assert_eq!(v["data"]["finished_at"].as_i64(), v["data"]["created_at"].as_i64().map(|c| c + 2));
    }

    #[test]
    fn chat_and_completion_shapes() {
        let c = blocking(&spec(RunKind::Chat));
        assert_eq!(c["mode"], "chat");
        assert!(c["conversation_id"].is_string());
        assert_eq!(
            c["answer"],
            "Simulated answer part 1. Simulated answer part 2. Simulated answer part 3. "
        );
        let p = blocking(&spec(RunKind::Completion));
        assert_eq!(p["mode"], "completion");
        assert!(p.get("conversation_id").is_none());
    }

    #[test]
    fn frames_are_sse() {
        let s = spec(RunKind::Workflow);
        let f = sse(&node_finished(&s, 1));
        assert!(f.starts_with(b"data: {"));
        assert!(f.ends_with(b"}\n\n"));
        assert_eq!(node_started(&s, 0)["data"]["node_type"], "start");
        assert_eq!(node_started(&s, 2)["data"]["node_type"], "end");
    }

    #[test]
    fn conversation_id_is_kept() {
        let s = RunSpec::new(
            RunKind::Chat,
            Duration::ZERO,
            0,
            &mut Entropy::new(None),
            Value::Null,
            Some("conv-1".into()),
        );
        assert_eq!(message_end(&s)["conversation_id"], "conv-1");
    }
}
