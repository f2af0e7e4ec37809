{
  "variables": {
    "haven_has_rbd": "<!(test -f /usr/include/rbd/librbd.h -a -f /usr/include/rados/librados.h && echo 1 || echo 0)"
  },
  "targets": [
    {
      "target_name": "haven_io",
      "sources": ["native/haven_io.c"],
      "cflags": ["-O2", "-Wall"]
    }
  ],
  "conditions": [
    [
      "haven_has_rbd==1",
      {
        "targets": [
          {
            "target_name": "haven_rbd",
            "sources": ["native/haven_rbd.c"],
            "cflags": ["-O2", "-Wall"],
            "libraries": ["-lrbd", "-lrados"]
          }
        ]
      }
    ]
  ]
}
