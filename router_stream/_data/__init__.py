"""Data shipped with the package: topic declarations and schemas (``topics``), the Postgres
migrations (``migrations``) and the example policy and inputs (``examples``). In the source tree
each is a link to the repository's top-level directory of that name, so there is one copy."""
