{
  "targets": [
    {
      "target_name": "haven_io",
      "sources": ["native/haven_io.c"],
      "cflags": ["-O2", "-Wall"]
    }
  ]
}
