"""Connected stores (Shopify, WooCommerce): their customer webhooks keep the audience in
sync, with each customer's marketing consent as the store records it.

- receiving: the one webhook endpoint per store, and what it refuses before anything is
  stored (too large, unknown store, bad signature, not JSON), idempotent on the
  delivery's id;
- shopify, woocommerce: each platform's signature and payloads, mapped to a sync Record;
- customers: a store customer applied through audience.sync, ordered by the store's own
  clock;
- privacy: Shopify's mandatory privacy webhooks (data request, customer and shop erasure).
"""
