"""Create a container in Azurite and upload a local folder's files into it (tests/cli/cloud.rs).

Usage: azure_upload.py CONNECTION_STRING CONTAINER FOLDER
Every file below FOLDER becomes a blob named by its path relative to FOLDER. Uses Microsoft's
own client (azure-storage-blob), so the fixtures do not depend on the code under test.
"""
import os
import sys

from azure.storage.blob import BlobServiceClient

connection, container, folder = sys.argv[1:4]
service = BlobServiceClient.from_connection_string(connection)
client = service.get_container_client(container)
if not client.exists():
    client.create_container()
for root, _dirs, files in os.walk(folder):
    for name in files:
        path = os.path.join(root, name)
        blob = os.path.relpath(path, folder).replace(os.sep, "/")
        with open(path, "rb") as data:
            client.upload_blob(blob, data, overwrite=True)
