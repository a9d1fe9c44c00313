// An SMSC written with the npm package `smpp` (node.js), which nobody at vmnd wrote: vmnd's
// interop test binds to it as an ESME. Once bound, it delivers a scripted set of deliver_sm
// (plain GSM text, UCS2 with an emoji, a two-part UDH-concatenated message, a delivery receipt)
// one after another and prints each deliver_sm_resp status as JSON lines on stdout:
//   {"port": N}                       when listening
//   {"bound": "transceiver"}          after a successful bind
//   {"results": [{"name", "status"}]} after the last response
// It answers enquire_link and unbind, and exits when stdin closes (the test ends).
// Usage: node smsc.js [destination]. Every message goes to `destination` (default 567678, a
// number the test config serves: vmnd only forwards what is addressed to a 6- or 10-digit VMN).
'use strict';
const smpp = require('smpp');

const to = process.argv[2] || '567678';

const script = [
  { name: 'plain', pdu: { source_addr: '919800000001', source_addr_ton: 1, source_addr_npi: 1,
      destination_addr: to, data_coding: 0, short_message: 'Hello from node 42' } },
  { name: 'ucs2', pdu: { source_addr: '919800000002', source_addr_ton: 1, source_addr_npi: 1,
      destination_addr: to, data_coding: 8, short_message: 'Привет 😀' } },
  { name: 'udh-part-2', pdu: { source_addr: '919800000003', source_addr_ton: 1, source_addr_npi: 1,
      destination_addr: to, data_coding: 0, esm_class: 0x40,
      short_message: { udh: Buffer.from([0x05, 0x00, 0x03, 0x7a, 0x02, 0x02]), message: 'second half' } } },
  { name: 'udh-part-1', pdu: { source_addr: '919800000003', source_addr_ton: 1, source_addr_npi: 1,
      destination_addr: to, data_coding: 0, esm_class: 0x40,
      short_message: { udh: Buffer.from([0x05, 0x00, 0x03, 0x7a, 0x02, 0x01]), message: 'first half, ' } } },
  { name: 'receipt', pdu: { source_addr: '919800000001', source_addr_ton: 1, source_addr_npi: 1,
      destination_addr: to, esm_class: 0x04, data_coding: 0,
      short_message: 'id:abc123 sub:001 dlvrd:001 submit date:2611281400 done date:2611281401 stat:DELIVRD err:000 text:Hello',
      receipted_message_id: 'abc123', message_state: 2 } },
];

function emit(obj) { process.stdout.write(JSON.stringify(obj) + '\n'); }

function runScript(session) {
  const results = [];
  let i = 0;
  const next = () => {
    if (i >= script.length) { emit({ results }); return; }
    const step = script[i++];
    session.deliver_sm(step.pdu, (resp) => {
      results.push({ name: step.name, status: resp.command_status });
      next();
    });
  };
  next();
}

const server = smpp.createServer((session) => {
  session.on('error', () => {});
  const onBind = (kind) => (pdu) => {
    if (pdu.system_id !== 'vmnd' || pdu.password !== 'secret') {
      session.send(pdu.response({ command_status: smpp.ESME_RINVPASWD }));
      return;
    }
    session.send(pdu.response({ system_id: 'node-smsc' }));
    emit({ bound: kind });
    runScript(session);
  };
  session.on('bind_transceiver', onBind('transceiver'));
  session.on('bind_receiver', onBind('receiver'));
  session.on('enquire_link', (pdu) => session.send(pdu.response()));
  session.on('unbind', (pdu) => { session.send(pdu.response()); session.close(); });
});
server.listen(0, '127.0.0.1', () => emit({ port: server.address().port }));
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
