// An Express app whose every event carries its request and actor (docs/producers.md, "Express").
//
// make run                                   # in one terminal: auditq and its servers
// set -a; . .auditq/producer.env; set +a     # in another: the producer's Redis URL
// (cd <repo>/clients/node && npm ci && npm pack)   # auditq-client-0.1.0.tgz, with dist/ built
// npm install <repo>/clients/node/auditq-client-0.1.0.tgz express
// node express_example.mjs
// curl -X PUT -H 'X-User: ada' localhost:3000/projects/42

import express from "express";
import { AuditClient, auditContext, setActor } from "auditq-client";

// AUDITQ_QUEUE from the environment too; `capture` never rejects and answers within 250 ms.
const audit = new AuditClient(process.env.AUDITQ_REDIS_URL);

const app = express();
// Request id, client IP (behind AUDITQ_TRUSTED_PROXIES only), user agent, method, path.
app.use(auditContext());
app.use((req, _res, next) => {
  // The app's own authentication (a header here) names the actor of the request.
  if (req.get("X-User")) setActor({ id: req.get("X-User"), type: "user" });
  next();
});

app.put("/projects/:id", async (req, res) => {
  const entity = { type: "project", id: req.params.id };
  const eventId = await audit.capture({ action: "project.updated", entity }); // the id, or null
  res.json({ audit_event: eventId });
});

const server = app.listen(Number(process.env.PORT ?? 3000));

process.on("SIGTERM", async () => {
  server.close();
  await audit.close(); // sends what is buffered
});
