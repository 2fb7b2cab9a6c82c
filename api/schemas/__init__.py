"""Request and response bodies of the REST API (`XxxIn` / `XxxPublic`), one module per resource."""
