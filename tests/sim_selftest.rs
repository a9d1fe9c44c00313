//! The carrier simulator tested on its own, against a minimal ESME written here with a tokio
//! `TcpStream`, the crate's frame codec and its PDU encode/decode: binds, windowed delivery and
//! acks, redelivery after an error status and after a dropped connection, enquire_link, unbind,
//! submit_sm, raw PDUs, malformed input, pacing, and the `mo` builders.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::FramedRead;

use vmnd::sim::{Smsc, SmscConfig, mo};
use vmnd::smpp::codec::{Frame, FrameCodec};
use vmnd::smpp::pdu::{self, Bind, Body, Pdu, ShortMessage, command_id, status, tlv_tag};
use vmnd::smpp::receipt::Receipt;

const STEP: Duration = Duration::from_secs(5);

/// How the test ESME binds.
#[derive(Clone, Copy)]
enum Kind {
    Receiver,
    Transmitter,
    Transceiver,
}

/// A minimal ESME: just enough SMPP to drive the simulator.
struct Esme {
    rd: FramedRead<OwnedReadHalf, FrameCodec>,
    wr: OwnedWriteHalf,
    seq: u32,
}

impl Esme {
    async fn connect(smsc: &Smsc) -> Esme {
        let stream = TcpStream::connect(smsc.addr()).await.expect("connect");
        let (rd, wr) = stream.into_split();
        Esme {
            rd: FramedRead::new(rd, FrameCodec),
            wr,
            seq: 0,
        }
    }

    /// Connect and bind with the default credentials; panics unless the bind is accepted.
    async fn bound(smsc: &Smsc, kind: Kind) -> Esme {
        let mut e = Esme::connect(smsc).await;
        let resp = e.bind(kind, "vmnd", "secret").await;
        assert_eq!(resp.command_status, status::ESME_ROK, "bind: {resp:?}");
        e
    }

    async fn send(&mut self, p: &Pdu) {
        self.wr
            .write_all(&pdu::encode_to_bytes(p))
            .await
            .expect("write");
    }

    /// Send a request with the next sequence number; returns that number.
    async fn request(&mut self, body: Body) -> u32 {
        self.seq += 1;
        let seq = self.seq;
        self.send(&Pdu {
            command_status: 0,
            sequence_number: seq,
            body,
        })
        .await;
        seq
    }

    /// The next PDU from the simulator, within 5 s.
    async fn recv(&mut self) -> Pdu {
        self.try_recv(STEP).await.expect("a PDU from the simulator")
    }

    /// The next PDU within `wait`, or None on timeout or end of stream.
    async fn try_recv(&mut self, wait: Duration) -> Option<Pdu> {
        match tokio::time::timeout(wait, self.rd.next()).await {
            Ok(Some(Ok(Frame::Pdu(bytes)))) => Some(pdu::decode(&bytes).expect("decodable PDU")),
            Ok(Some(Ok(other))) => panic!("unexpected frame {other:?}"),
            Ok(Some(Err(_))) | Ok(None) | Err(_) => None,
        }
    }

    /// The next raw frame within 5 s.
    async fn recv_frame(&mut self) -> Bytes {
        match tokio::time::timeout(STEP, self.rd.next()).await {
            Ok(Some(Ok(Frame::Pdu(bytes)))) => bytes,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// True when the simulator closed the connection within 5 s.
    async fn closed(&mut self) -> bool {
        loop {
            match tokio::time::timeout(STEP, self.rd.next()).await {
                Ok(None) | Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => continue,
                Err(_) => return false,
            }
        }
    }

    async fn bind(&mut self, kind: Kind, system_id: &str, password: &str) -> Pdu {
        let b = Bind {
            system_id: system_id.into(),
            password: password.into(),
            interface_version: 0x34,
            ..Bind::default()
        };
        let body = match kind {
            Kind::Receiver => Body::BindReceiver(b),
            Kind::Transmitter => Body::BindTransmitter(b),
            Kind::Transceiver => Body::BindTransceiver(b),
        };
        let seq = self.request(body).await;
        let resp = self.recv().await;
        assert_eq!(resp.sequence_number, seq);
        resp
    }

    /// Receive one deliver_sm; returns its sequence number and body.
    async fn recv_deliver(&mut self) -> (u32, ShortMessage) {
        let p = self.recv().await;
        match p.body {
            Body::DeliverSm(sm) => (p.sequence_number, *sm),
            other => panic!("expected deliver_sm, got {other:?}"),
        }
    }

    async fn ack(&mut self, seq: u32, command_status: u32) {
        self.send(&Pdu {
            command_status,
            sequence_number: seq,
            body: Body::DeliverSmResp {
                message_id: String::new(),
            },
        })
        .await;
    }
}

fn text_of(sm: &ShortMessage) -> String {
    String::from_utf8_lossy(&sm.short_message).into_owned()
}

async fn start(cfg: SmscConfig) -> Smsc {
    Smsc::start(cfg).await.expect("start simulator")
}

#[tokio::test]
async fn bind_accepted_and_refused() {
    let smsc = start(SmscConfig::default()).await;

    let mut e = Esme::connect(&smsc).await;
    let r = e.bind(Kind::Transceiver, "vmnd", "wrong").await;
    assert_eq!(r.command_status, status::ESME_RINVPASWD);
    let r = e.bind(Kind::Transceiver, "other", "secret").await;
    assert_eq!(r.command_status, status::ESME_RINVSYSID);
    let r = e.bind(Kind::Transceiver, "vmnd", "secret").await;
    assert_eq!(r.command_status, status::ESME_ROK);
    assert!(matches!(r.body, Body::BindTransceiverResp { .. }), "{r:?}");
    // Binding twice on one session is refused; the first bind stays.
    let r = e.bind(Kind::Receiver, "vmnd", "secret").await;
    assert_eq!(r.command_status, status::ESME_RALYBND);

    let mut rx = Esme::connect(&smsc).await;
    let r = rx.bind(Kind::Receiver, "vmnd", "secret").await;
    assert!(matches!(r.body, Body::BindReceiverResp { .. }), "{r:?}");
    let mut tx = Esme::connect(&smsc).await;
    let r = tx.bind(Kind::Transmitter, "vmnd", "secret").await;
    assert!(matches!(r.body, Body::BindTransmitterResp { .. }), "{r:?}");

    let s = smsc.stats();
    assert_eq!(s.binds_ok, 3);
    assert_eq!(s.binds_refused, 3);
    assert_eq!(s.sessions_bound, 3);
    assert_eq!(s.connections, 3);
    smsc.shutdown();
}

#[tokio::test]
async fn first_binds_refused_when_configured() {
    let smsc = start(SmscConfig {
        refuse_binds: 2,
        refuse_status: status::ESME_RBINDFAIL,
        ..SmscConfig::default()
    })
    .await;
    for _ in 0..2 {
        let mut e = Esme::connect(&smsc).await;
        let r = e.bind(Kind::Transceiver, "vmnd", "secret").await;
        assert_eq!(r.command_status, status::ESME_RBINDFAIL);
    }
    let _e = Esme::bound(&smsc, Kind::Transceiver).await;
    let s = smsc.stats();
    assert_eq!((s.binds_refused, s.binds_ok, s.sessions_bound), (2, 1, 1));
}

#[tokio::test]
async fn messages_delivered_within_window_and_acked() {
    let smsc = start(SmscConfig {
        window: 4,
        ..SmscConfig::default()
    })
    .await;
    let ids: Vec<u64> = (0..10)
        .map(|i| smsc.enqueue(mo::gsm("919812345678", "56767", &format!("msg {i}"))))
        .collect();
    let mut e = Esme::bound(&smsc, Kind::Receiver).await;

    // The window: four arrive, then nothing until one is answered.
    let mut pending = Vec::new();
    for _ in 0..4 {
        pending.push(e.recv_deliver().await);
    }
    assert!(e.try_recv(Duration::from_millis(150)).await.is_none());
    assert_eq!(smsc.stats().sent, 4);

    let mut texts = Vec::new();
    while texts.len() < 10 {
        if pending.is_empty() {
            pending.push(e.recv_deliver().await);
        }
        let (seq, sm) = pending.remove(0);
        assert_eq!(sm.source.addr, "919812345678");
        assert_eq!((sm.source.ton, sm.source.npi), (1, 1));
        assert_eq!(sm.dest.addr, "56767");
        texts.push(text_of(&sm));
        e.ack(seq, status::ESME_ROK).await;
    }
    let want: Vec<String> = (0..10).map(|i| format!("msg {i}")).collect();
    assert_eq!(texts, want, "delivered in queue order");

    assert!(smsc.wait_until(STEP, |s| s.acked_ok == 10).await);
    let s = smsc.stats();
    assert_eq!(
        (s.enqueued, s.sent, s.outstanding, s.acked_error),
        (10, 10, 0, 0)
    );
    let acked = smsc.acked();
    assert_eq!(acked.iter().map(|a| a.id).collect::<Vec<_>>(), ids);
    assert!(acked.iter().all(|a| a.status == 0));
    assert_eq!(text_of(&acked[3].sm), "msg 3");
    assert_eq!(smsc.ack_latencies_us().len(), 10);
}

#[tokio::test]
async fn error_ack_is_redelivered_after_retry_delay() {
    let smsc = start(SmscConfig {
        retry_after: Duration::from_millis(200),
        ..SmscConfig::default()
    })
    .await;
    let id = smsc.enqueue(mo::gsm("919812345678", "56767", "again"));
    let mut e = Esme::bound(&smsc, Kind::Transceiver).await;

    let (seq, first) = e.recv_deliver().await;
    let answered = Instant::now();
    e.ack(seq, status::ESME_RX_T_APPN).await;
    let (seq2, second) = e.recv_deliver().await;
    assert!(
        answered.elapsed() >= Duration::from_millis(150),
        "waited retry_after"
    );
    assert_eq!(first, second, "the same message again");
    e.ack(seq2, status::ESME_ROK).await;

    assert!(smsc.wait_until(STEP, |s| s.acked_ok == 1).await);
    let s = smsc.stats();
    assert_eq!((s.sent, s.acked_error, s.outstanding), (2, 1, 0));
    assert_eq!(smsc.acked()[0].id, id);
    // A generic_nack for a deliver_sm counts as an error answer too.
    smsc.enqueue(mo::gsm("919812345678", "56767", "nacked"));
    let (seq, _) = e.recv_deliver().await;
    e.send(&Pdu {
        command_status: status::ESME_RINVCMDLEN,
        sequence_number: seq,
        body: Body::GenericNack,
    })
    .await;
    let (seq, sm) = e.recv_deliver().await;
    assert_eq!(text_of(&sm), "nacked");
    e.ack(seq, 0).await;
    assert!(smsc.wait_until(STEP, |s| s.acked_ok == 2).await);
    assert_eq!(smsc.stats().generic_nacks_received, 1);
}

#[tokio::test]
async fn no_retry_status_gives_up() {
    let smsc = start(SmscConfig {
        retry_after: Duration::from_millis(50),
        no_retry_statuses: vec![status::ESME_RX_P_APPN],
        ..SmscConfig::default()
    })
    .await;
    smsc.enqueue(mo::gsm("919812345678", "56767", "final"));
    let mut e = Esme::bound(&smsc, Kind::Transceiver).await;
    let (seq, _) = e.recv_deliver().await;
    e.ack(seq, status::ESME_RX_P_APPN).await;
    assert!(smsc.wait_until(STEP, |s| s.gave_up == 1).await);
    assert!(e.try_recv(Duration::from_millis(200)).await.is_none());
    assert_eq!(smsc.stats().outstanding, 1);
}

#[tokio::test]
async fn dropped_connection_redelivers_in_flight_on_rebind() {
    let smsc = start(SmscConfig::default()).await;
    for i in 0..5 {
        smsc.enqueue(mo::gsm("919812345678", "56767", &format!("m{i}")));
    }
    let mut e = Esme::bound(&smsc, Kind::Transceiver).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(e.recv_deliver().await);
    }
    // Answer two; the other three are in flight when the carrier drops.
    e.ack(got[0].0, 0).await;
    e.ack(got[1].0, 0).await;
    assert!(smsc.wait_until(STEP, |s| s.acked_ok == 2).await);
    smsc.drop_connections();
    assert!(e.closed().await);
    assert!(smsc.wait_until(STEP, |s| s.sessions_bound == 0).await);

    let mut e = Esme::bound(&smsc, Kind::Receiver).await;
    let mut again = Vec::new();
    for _ in 0..3 {
        let (seq, sm) = e.recv_deliver().await;
        again.push(text_of(&sm));
        e.ack(seq, 0).await;
    }
    assert_eq!(again, ["m2", "m3", "m4"], "in-flight ones, in order");
    assert!(smsc.wait_until(STEP, |s| s.acked_ok == 5).await);
    let s = smsc.stats();
    assert_eq!((s.sent, s.outstanding, s.connections), (8, 0, 2));
}

#[tokio::test]
async fn enquire_links_both_ways() {
    let smsc = start(SmscConfig {
        enquire_link_every: Some(Duration::from_millis(100)),
        ..SmscConfig::default()
    })
    .await;
    let mut e = Esme::bound(&smsc, Kind::Transceiver).await;

    // Ours: answered.
    let seq = e.request(Body::EnquireLink).await;
    let r = e.recv().await;
    assert_eq!((r.sequence_number, &r.body), (seq, &Body::EnquireLinkResp));

    // The periodic one from the simulator.
    let p = e.recv().await;
    assert_eq!(p.body, Body::EnquireLink);
    e.send(&p.response(0).unwrap()).await;
    assert!(
        smsc.wait_until(STEP, |s| s.enquire_link_resps_received >= 1)
            .await
    );

    // On demand: answered by a concurrent ESME loop.
    let esme = async {
        loop {
            let p = e.recv().await;
            if p.body == Body::EnquireLink {
                e.send(&p.response(0).unwrap()).await;
                return;
            }
        }
    };
    let (n, ()) = tokio::join!(smsc.enquire_link_all(), esme);
    assert_eq!(n, 1);
    assert_eq!(smsc.stats().enquire_links_received, 1);
}

#[tokio::test]
async fn unbind_all_closes_sessions() {
    let smsc = start(SmscConfig::default()).await;
    let mut a = Esme::bound(&smsc, Kind::Transceiver).await;
    let mut b = Esme::bound(&smsc, Kind::Receiver).await;
    async fn answer(e: &mut Esme) -> bool {
        let p = e.recv().await;
        assert_eq!(p.body, Body::Unbind);
        e.send(&p.response(0).unwrap()).await;
        e.closed().await
    }
    let (n, a_closed, b_closed) = tokio::join!(smsc.unbind_all(), answer(&mut a), answer(&mut b));
    assert_eq!(n, 2);
    assert!(a_closed && b_closed);
    assert!(smsc.wait_until(STEP, |s| s.sessions_bound == 0).await);
}

#[tokio::test]
async fn esme_unbind_is_answered_and_in_flight_requeued() {
    let smsc = start(SmscConfig::default()).await;
    smsc.enqueue(mo::gsm("919812345678", "56767", "kept"));
    let mut e = Esme::bound(&smsc, Kind::Transceiver).await;
    let _ = e.recv_deliver().await;
    let seq = e.request(Body::Unbind).await;
    let r = e.recv().await;
    assert_eq!((r.sequence_number, r.body), (seq, Body::UnbindResp));
    assert!(e.closed().await);

    let mut e = Esme::bound(&smsc, Kind::Transceiver).await;
    let (seq, sm) = e.recv_deliver().await;
    assert_eq!(text_of(&sm), "kept");
    e.ack(seq, 0).await;
    assert!(smsc.wait_until(STEP, |s| s.acked_ok == 1).await);
}

#[tokio::test]
async fn submit_sm_answered_and_recorded() {
    let smsc = start(SmscConfig::default()).await;
    let mut e = Esme::bound(&smsc, Kind::Transceiver).await;
    let sm = mo::gsm("56767", "919812345678", "Thanks!");
    let seq = e.request(Body::SubmitSm(Box::new(sm.clone()))).await;
    let r = e.recv().await;
    assert_eq!(r.sequence_number, seq);
    assert_eq!(r.command_status, 0);
    assert_eq!(
        r.body,
        Body::SubmitSmResp {
            message_id: "sim-1".into()
        }
    );
    assert!(smsc.wait_until(STEP, |s| s.submits_received == 1).await);
    assert_eq!(smsc.submitted(), vec![sm.clone()]);

    // A receiver may not submit.
    let mut rx = Esme::bound(&smsc, Kind::Receiver).await;
    rx.request(Body::SubmitSm(Box::new(sm))).await;
    assert_eq!(rx.recv().await.command_status, status::ESME_RINVBNDSTS);
}

#[tokio::test]
async fn raw_pdus_sent_as_is_and_answers_recorded() {
    let smsc = start(SmscConfig::default()).await;
    // An unknown command id, and a deliver_sm whose body stops short.
    let mut unknown = BytesMut::new();
    unknown.put_u32(16);
    unknown.put_u32(0x0000_0099);
    unknown.put_u32(0);
    unknown.put_u32(0x4000_0001);
    let mut short = BytesMut::new();
    short.put_u32(19);
    short.put_u32(command_id::DELIVER_SM);
    short.put_u32(0);
    short.put_u32(0x4000_0002);
    short.put_slice(b"ab\0");
    smsc.enqueue_raw(unknown.clone().freeze());
    smsc.enqueue_raw(short.clone().freeze());
    smsc.enqueue(mo::gsm("919812345678", "56767", "after raw"));

    let mut e = Esme::bound(&smsc, Kind::Transceiver).await;
    assert_eq!(e.recv_frame().await, unknown.freeze());
    assert_eq!(e.recv_frame().await, short.freeze());
    // Answer as the daemon would: generic_nack, then the command's error response.
    e.send(&Pdu {
        command_status: status::ESME_RINVCMDID,
        sequence_number: 0x4000_0001,
        body: Body::GenericNack,
    })
    .await;
    e.send(&Pdu {
        command_status: status::ESME_RINVCMDLEN,
        sequence_number: 0x4000_0002,
        body: Body::DeliverSmResp {
            message_id: String::new(),
        },
    })
    .await;
    let (seq, sm) = e.recv_deliver().await;
    assert_eq!(text_of(&sm), "after raw");
    e.ack(seq, 0).await;
    assert!(smsc.wait_until(STEP, |s| s.acked_ok == 1).await);

    let raw = smsc.raw_responses();
    assert_eq!(raw.len(), 2, "{raw:?}");
    assert_eq!(raw[0].body, Body::GenericNack);
    assert_eq!(raw[0].command_status, status::ESME_RINVCMDID);
    assert_eq!(raw[1].sequence_number, 0x4000_0002);
    assert_eq!(raw[1].command_status, status::ESME_RINVCMDLEN);
    assert_eq!(smsc.stats().raw_sent, 2);
    assert_eq!(smsc.stats().enqueued, 1, "raw PDUs are not messages");
}

#[tokio::test]
async fn bad_input_from_esme_is_nacked_and_session_stays() {
    let smsc = start(SmscConfig::default()).await;
    let mut e = Esme::bound(&smsc, Kind::Transceiver).await;

    // Unknown command id.
    let mut b = BytesMut::new();
    b.put_u32(16);
    b.put_u32(0x0000_0777);
    b.put_u32(0);
    b.put_u32(42);
    e.wr.write_all(&b).await.unwrap();
    let r = e.recv().await;
    assert_eq!(
        (r.body, r.command_status, r.sequence_number),
        (Body::GenericNack, status::ESME_RINVCMDID, 42)
    );

    // A submit_sm with a truncated body.
    let mut b = BytesMut::new();
    b.put_u32(18);
    b.put_u32(command_id::SUBMIT_SM);
    b.put_u32(0);
    b.put_u32(43);
    b.put_slice(b"xx");
    e.wr.write_all(&b).await.unwrap();
    let r = e.recv().await;
    assert_eq!(r.sequence_number, 43);
    assert_ne!(r.command_status, 0);

    // Still bound and working.
    let seq = e.request(Body::EnquireLink).await;
    assert_eq!(e.recv().await.sequence_number, seq);
    assert_eq!(smsc.stats().sessions_bound, 1);
}

#[tokio::test]
async fn requests_before_bind_are_refused() {
    let smsc = start(SmscConfig::default()).await;
    smsc.enqueue(mo::gsm("919812345678", "56767", "not yet"));
    let mut e = Esme::connect(&smsc).await;
    e.request(Body::SubmitSm(Box::new(mo::gsm("1", "2", "x"))))
        .await;
    assert_eq!(e.recv().await.command_status, status::ESME_RINVBNDSTS);
    // No deliver_sm before a bind, nor to a transmitter.
    assert!(e.try_recv(Duration::from_millis(100)).await.is_none());
    let r = e.bind(Kind::Transmitter, "vmnd", "secret").await;
    assert_eq!(r.command_status, 0);
    assert!(e.try_recv(Duration::from_millis(100)).await.is_none());
    assert_eq!(smsc.stats().sent, 0);
}

#[tokio::test]
async fn messages_dealt_across_sessions() {
    let smsc = start(SmscConfig::default()).await;
    let mut a = Esme::bound(&smsc, Kind::Transceiver).await;
    let mut b = Esme::bound(&smsc, Kind::Receiver).await;
    for i in 0..6 {
        smsc.enqueue(mo::gsm("919812345678", "56767", &format!("d{i}")));
    }
    async fn drain(e: &mut Esme) -> usize {
        let mut n = 0;
        while let Some(p) = e.try_recv(Duration::from_millis(300)).await {
            e.send(&p.response(0).unwrap()).await;
            n += 1;
        }
        n
    }
    let (na, nb) = tokio::join!(drain(&mut a), drain(&mut b));
    assert_eq!(na + nb, 6);
    assert!(
        na >= 1 && nb >= 1,
        "both sessions got messages: {na} + {nb}"
    );
    assert!(smsc.wait_until(STEP, |s| s.acked_ok == 6).await);
}

#[tokio::test]
async fn rate_limit_paces_deliveries() {
    let smsc = start(SmscConfig {
        rate_per_sec: Some(20),
        window: 100,
        ..SmscConfig::default()
    })
    .await;
    for i in 0..6 {
        smsc.enqueue(mo::gsm("919812345678", "56767", &format!("r{i}")));
    }
    let mut e = Esme::bound(&smsc, Kind::Transceiver).await;
    let t0 = Instant::now();
    for _ in 0..6 {
        let (seq, _) = e.recv_deliver().await;
        e.ack(seq, 0).await;
    }
    // Six at 20/s with a burst of one: at least five gaps of 50 ms.
    assert!(
        t0.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn ack_records_can_be_turned_off() {
    let smsc = start(SmscConfig {
        record_acks: false,
        window: 64,
        ..SmscConfig::default()
    })
    .await;
    let ids =
        smsc.enqueue_many((0..200).map(|i| mo::gsm("919812345678", "56767", &format!("b{i}"))));
    assert_eq!(ids.end - ids.start, 200);
    let mut e = Esme::bound(&smsc, Kind::Receiver).await;
    for _ in 0..200 {
        let (seq, _) = e.recv_deliver().await;
        e.ack(seq, 0).await;
    }
    assert!(smsc.wait_until(STEP, |s| s.acked_ok == 200).await);
    assert!(smsc.acked().is_empty());
    assert_eq!(smsc.ack_latencies_us().len(), 200);
}

#[test]
fn mo_builders() {
    let sm = mo::gsm("+919812345678", "56767", "Hi @ there");
    assert_eq!(sm.source.addr, "919812345678");
    assert_eq!((sm.data_coding, sm.esm_class), (0x00, 0x00));
    assert_eq!(sm.short_message[3], 0x00, "@ is septet 0");
    assert_eq!(mo::gsm("ACME", "56767", "x").source.ton, 5);

    assert_eq!(
        mo::ucs2("1", "2", "é").short_message.as_ref(),
        &[0x00, 0xE9]
    );
    assert_eq!(mo::ucs2("1", "2", "x").data_coding, 0x08);
    assert_eq!(mo::latin1("1", "2", "é").short_message.as_ref(), &[0xE9]);
    assert_eq!(mo::binary("1", "2", &[1, 2, 3]).data_coding, 0x04);
    assert_eq!(
        mo::gsm_packed("1", "2", "hi").short_message.as_ref(),
        &[0xE8, 0x34]
    );

    let p = mo::payload_tlv("1", "2", "hello");
    assert!(p.short_message.is_empty());
    assert_eq!(p.tlv(tlv_tag::MESSAGE_PAYLOAD).unwrap().as_ref(), b"hello");
    // Too long for short_message: goes to message_payload by itself.
    let long = mo::gsm("1", "2", &"a".repeat(300));
    assert!(long.short_message.is_empty());
    assert_eq!(long.user_data().len(), 300);

    // 8-bit reference, GSM: 153 septets a part.
    let parts = mo::concat_udh("1", "2", &"x".repeat(400), 7, false);
    assert_eq!(parts.len(), 3);
    assert!(
        parts
            .iter()
            .all(|p| p.esm_class == 0x40 && p.data_coding == 0)
    );
    assert_eq!(&parts[0].short_message[..6], &[5, 0, 3, 7, 3, 1]);
    assert_eq!(parts[0].short_message.len(), 6 + 153);
    assert_eq!(parts[2].short_message.len(), 6 + 400 - 306);
    // 16-bit reference.
    let parts = mo::concat_udh("1", "2", &"x".repeat(200), 0x1234, true);
    assert_eq!(&parts[1].short_message[..7], &[6, 8, 4, 0x12, 0x34, 2, 2]);
    // An escape pair (€ = 1B 65) is not split across parts.
    let text = format!("{}€tail", "x".repeat(152));
    let parts = mo::concat_udh("1", "2", &text, 1, false);
    assert_eq!(parts[0].short_message.len(), 6 + 152);
    assert_eq!(&parts[1].short_message[6..8], &[0x1B, 0x65]);
    // UCS2, a surrogate pair at the boundary stays whole.
    let text = format!("{}😀end", "ж".repeat(66));
    let parts = mo::concat_udh("1", "2", &text, 9, false);
    assert_eq!(parts[0].data_coding, 0x08);
    assert_eq!(parts[0].short_message.len(), 6 + 66 * 2);
    assert_eq!(&parts[1].short_message[6..8], &[0xD8, 0x3D]);

    let sar = mo::concat_sar("1", "2", &"y".repeat(200), 0x0102);
    assert_eq!(sar.len(), 2);
    assert_eq!(sar[1].sar(), Some((0x0102, 2, 2)));
    assert_eq!(sar[0].esm_class, 0);

    let r = Receipt {
        id: "abc123".into(),
        stat: "DELIVRD".into(),
        err: Some("000".into()),
        ..Receipt::default()
    };
    let sm = mo::receipt("919812345678", "56767", &r);
    assert!(sm.is_receipt());
    assert_eq!(
        sm.tlv(tlv_tag::RECEIPTED_MESSAGE_ID).unwrap().as_ref(),
        b"abc123\0"
    );
    assert_eq!(sm.tlv(tlv_tag::MESSAGE_STATE).unwrap().as_ref(), &[2]);
    assert!(text_of(&sm).contains("id:abc123"));
}

/// Answer every deliver_sm with status 0 as fast as possible (responses written in batches),
/// until the connection closes or nothing arrives for `idle`. Returns how many were answered.
async fn ack_fast(e: &mut Esme, idle: Duration) -> u64 {
    use futures_util::FutureExt;
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut n = 0;
    loop {
        let first = match tokio::time::timeout(idle, e.rd.next()).await {
            Ok(Some(Ok(f))) => f,
            _ => return n,
        };
        let mut frame = Some(first);
        while let Some(f) = frame.take() {
            if let Frame::Pdu(b) = f {
                let h = pdu::header(&b).expect("header");
                if h.command_id == command_id::DELIVER_SM {
                    // deliver_sm_resp with an empty message_id: 17 octets.
                    out.put_u32(17);
                    out.put_u32(command_id::DELIVER_SM_RESP);
                    out.put_u32(0);
                    out.put_u32(h.sequence_number);
                    out.put_u8(0);
                    n += 1;
                }
            }
            if out.len() < 60_000 {
                if let Some(Some(Ok(f))) = e.rd.next().now_or_never() {
                    frame = Some(f);
                }
            }
        }
        if e.wr.write_all(&out).await.is_err() {
            return n;
        }
        out.clear();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_messages_over_two_sessions_with_a_drop_all_acked_once() {
    const N: u64 = 20_000;
    let smsc = start(SmscConfig {
        window: 50,
        ..SmscConfig::default()
    })
    .await;
    let ids = smsc.enqueue_many((0..N).map(|i| mo::gsm("919812345678", "56767", &format!("s{i}"))));

    let run = |smsc: Smsc| async move {
        let mut total = 0;
        // Reconnect after the drop, like the daemon's supervisor.
        while !smsc
            .wait_until(Duration::from_millis(1), |s| s.acked_ok == N)
            .await
        {
            let mut e = Esme::bound(&smsc, Kind::Transceiver).await;
            total += ack_fast(&mut e, Duration::from_millis(300)).await;
        }
        total
    };
    let a = tokio::spawn(run(smsc.clone()));
    let b = tokio::spawn(run(smsc.clone()));
    assert!(
        smsc.wait_until(Duration::from_secs(30), |s| s.acked_ok >= N / 3)
            .await
    );
    smsc.drop_connections();
    assert!(
        smsc.wait_until(Duration::from_secs(60), |s| s.acked_ok == N)
            .await,
        "{:?}",
        smsc.stats()
    );
    let answered = a.await.unwrap() + b.await.unwrap();

    let s = smsc.stats();
    assert_eq!((s.acked_ok, s.outstanding), (N, 0));
    assert!(s.sent >= N && answered >= N, "{s:?}, answered {answered}");
    let mut acked: Vec<u64> = smsc.acked().iter().map(|a| a.id).collect();
    acked.sort_unstable();
    assert_eq!(
        acked,
        ids.collect::<Vec<_>>(),
        "every message acked exactly once"
    );
    assert_eq!(smsc.ack_latencies_us().len() as u64, N);
}
