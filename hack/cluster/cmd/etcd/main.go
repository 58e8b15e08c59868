// Command etcd is the upstream etcd server, built from the module proxy because
// release binaries cannot be downloaded on the machines this project runs on.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
