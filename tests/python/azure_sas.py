"""Print an account SAS token (read and list on blobs) for Azurite (tests/cli/cloud.rs).

Usage: azure_sas.py ACCOUNT KEY
Made with Microsoft's own client (azure-storage-blob), valid for an hour.
"""
import datetime
import sys

from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

account, key = sys.argv[1:3]
print(
    generate_account_sas(
        account,
        key,
        resource_types=ResourceTypes(service=True, container=True, object=True),
        permission=AccountSasPermissions(read=True, list=True),
        expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1),
    )
)
