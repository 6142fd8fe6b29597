"""`bcm-tools events`: the node's chain and Lightning events on Kafka (`bridge`), read back by
operators (`tail`). `schemas` defines the messages; each source module follows one daemon."""
