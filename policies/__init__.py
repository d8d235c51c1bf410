"""Policy-as-code (Cedar + typed YAML bundle). Lands in a later issue; the spine authorizes by scope."""
