// Package hooks runs the commands that surround a shipment (pre-send,
// post-send, pre-receive, post-receive, on-failure) and the powered-off
// safety checks made before an image is read.
//
// It must never read or write shipment data: it only decides whether a
// phase may go on.
package hooks
