// The docs' Express backend for a Stripe App's signed requests, as a benchmark baseline:
// express.raw body, stripe.webhooks.signature.verifyHeader, a JSON answer.
//
//     node bench/express/server.js PORT SECRET [WORKERS]
//
// WORKERS > 1 runs it the way Node uses several cores: the cluster module, one port.
const cluster = require('node:cluster');
const express = require('express');
const stripe = require('stripe')('sk_test_unused');

const [port, secret, workers] = [Number(process.argv[2]), process.argv[3],
                                 Number(process.argv[4] || 1)];

if (workers > 1 && cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
  process.on('SIGTERM', () => {
    for (const w of Object.values(cluster.workers)) w.kill('SIGTERM');
    process.exit(0);
  });
} else {
  const app = express();
  app.post('/bare', express.raw({type: '*/*'}), (req, res) => {
    try {
      stripe.webhooks.signature.verifyHeader(req.body, req.headers['stripe-signature'], secret);
    } catch (err) {
      res.status(401).json({ok: false});
      return;
    }
    res.json({ok: true});
  });
  app.get('/healthz', (req, res) => res.send('ok'));
  app.listen(port, '127.0.0.1');
  process.on('SIGTERM', () => process.exit(0));
}
