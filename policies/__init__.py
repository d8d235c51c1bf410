"""Policy-as-code (Cedar + typed YAML bundle); lands later. The spine authorizes by scope."""
