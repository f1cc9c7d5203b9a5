"""The panic mailer: panics from anywhere → e-mail to the on-call list, folded and rate-limited.

config → mailer (folding, rate limit, digest, SMTP with retries) → daemon (the panic queue)."""
